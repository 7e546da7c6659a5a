"""The named SQL of ``turnstore.postgres.statements``, read without a server: every
statement returning turns selects exactly the ``Turn`` fields, in order (the row factory
relies on it), and the lock classes written out in the SQL are the documented constants."""

from __future__ import annotations

import re

import pytest

from turnstore.model import Turn
from turnstore.postgres import CHAT_LOCK_CLASS, MIGRATION_LOCK_CLASS, PostgresTurnRepository
from turnstore.postgres import statements as q
from turnstore.postgres.scope import ScopedStatement

TURN_FIELDS = list(Turn.model_fields)


def selected_columns(statement: str) -> list[str]:
    """The names of a statement's last select (or returning) list, in order: what its
    rows hold (a CTE comes first, so the last list is the outermost one)."""
    *_, keyword = re.finditer(r"\b(?:SELECT|RETURNING)\b", statement)
    columns = re.split(r"\bFROM\b", statement[keyword.end() :])[0]
    return [column.strip() for column in columns.split(",")]


def test_the_column_list_is_the_turn_fields() -> None:
    assert list(q.TURN_COLUMNS) == TURN_FIELDS


@pytest.mark.parametrize("name", q.TURN_ROW_STATEMENTS)
def test_each_turn_statement_selects_the_turn_fields_in_order(name: str) -> None:
    assert selected_columns(getattr(q, name)) == TURN_FIELDS


def test_every_statement_selecting_many_columns_is_listed_as_a_turn_statement() -> None:
    """A new statement returning whole turns must be added to ``TURN_ROW_STATEMENTS`` (and
    so to the test above) rather than slip past it."""
    returning_turns = {
        name
        for name in q.__all__
        if name.isupper()
        and isinstance(value := getattr(q, name), str)
        and "tenant_id, chat_id" in value
        and re.search(r"\b(?:RETURNING|SELECT)\s+id,", value)
    }
    assert returning_turns == set(q.TURN_ROW_STATEMENTS)


def test_the_lock_classes_written_in_the_sql_are_the_constants() -> None:
    assert f"pg_advisory_xact_lock({CHAT_LOCK_CLASS}," in q.LOCK_CHAT
    assert f"pg_advisory_xact_lock({CHAT_LOCK_CLASS}," in q.LOCK_VISIBLE_CHAT
    # Transaction-scoped: a session-level lock would stay on a pooled server session.
    assert f"pg_advisory_xact_lock({MIGRATION_LOCK_CLASS}," in q.MIGRATION_LOCK
    assert CHAT_LOCK_CLASS.to_bytes(4, "big") == b"TSCH"
    assert MIGRATION_LOCK_CLASS.to_bytes(4, "big") == b"TSMG"


def test_statements_are_rendered_with_the_schema_quoted_and_no_placeholder_left() -> None:
    repository = PostgresTurnRepository('odd"schema%')
    for slot in PostgresTurnRepository.__slots__:
        value = getattr(repository, slot, None)
        texts = [value] if isinstance(value, str) else []
        if isinstance(value, ScopedStatement):
            texts = [value.head, value.tail]
        for text in texts:
            assert "{" not in text, slot
            if "chat_turns" in text:
                assert '"odd""schema%%"."chat_turns"' in text, slot
