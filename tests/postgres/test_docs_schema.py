"""docs/schema.md tells the truth: it names every column, constraint and index a migrated
database has, and its foreign-key example runs and does what it says."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from psycopg.errors import ForeignKeyViolation

from turnstore.model import CreateTurnParams, RequesterType
from turnstore.postgres import PostgresStore
from turnstore.scope import AccessScope
from turnstore.testing.plugin import partitions_under_test

DOC = (Path(__file__).parents[2] / "docs" / "schema.md").read_text(encoding="utf-8")
FK_EXAMPLE = re.compile(r"<!-- example: foreign-keys -->\n```sql\n(?P<body>.*?)```", re.DOTALL)
FK_EXAMPLE_PARTITIONED = re.compile(
    r"<!-- example: foreign-keys-partitioned -->\n```sql\n(?P<body>.*?)```", re.DOTALL
)
#: The example of the layout under test (``TURNSTORE_TEST_PARTITIONS``).
PARTITIONED = bool(partitions_under_test())


async def catalog_names(dsn: str) -> dict[str, set[str]]:
    """Columns, constraints and indexes of turnstore.chat_turns, read from the catalog."""
    queries = {
        "column": "SELECT attname FROM pg_attribute WHERE attrelid = %(t)s::regclass"
        " AND attnum > 0 AND NOT attisdropped",
        # PostgreSQL 18 also catalogs NOT NULL as constraints (contype 'n'); the column
        # table documents those.
        "constraint": "SELECT conname FROM pg_constraint WHERE conrelid = %(t)s::regclass"
        " AND contype <> 'n'",
        "index": "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = %(t)s::regclass",
    }
    found: dict[str, set[str]] = {}
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for kind, query in queries.items():
            cur = await conn.execute(query, {"t": "turnstore.chat_turns"})
            found[kind] = {str(row[0]).removeprefix("turnstore.") for row in await cur.fetchall()}
    return found


async def test_every_column_constraint_and_index_is_documented(turnstore_pg_dsn: str) -> None:
    found = await catalog_names(turnstore_pg_dsn)
    assert all(found.values())
    for kind, names in found.items():
        missing = sorted(n for n in names if f"`{n}`" not in DOC)
        assert missing == [], f"{kind}s missing from docs/schema.md"


@pytest.fixture
async def store_with_foreign_keys(turnstore_pg_dsn: str) -> AsyncIterator[PostgresStore]:
    match = (FK_EXAMPLE_PARTITIONED if PARTITIONED else FK_EXAMPLE).search(DOC)
    assert match is not None
    async with await psycopg.AsyncConnection.connect(turnstore_pg_dsn, autocommit=True) as conn:
        await conn.execute(match["body"].encode())
    async with await PostgresStore.open(turnstore_pg_dsn) as store:
        yield store


def turn_params(tenant_id: uuid.UUID, chat_id: uuid.UUID) -> CreateTurnParams:
    return CreateTurnParams(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        chat_id=chat_id,
        request_id=uuid.uuid4(),
        requester_type=RequesterType.SYSTEM,
    )


async def test_the_foreign_key_example_guards_turns(
    store_with_foreign_keys: PostgresStore,
) -> None:
    store, scope = store_with_foreign_keys, AccessScope.allow_all()
    tenant, other_tenant, chat = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    async with store.connection() as conn:
        with pytest.raises(ForeignKeyViolation):
            await store.turns.create_turn(conn, scope, turn_params(tenant, chat))
        await conn.execute("INSERT INTO app.chats (id, tenant_id) VALUES (%s, %s)", (chat, tenant))
        with pytest.raises(ForeignKeyViolation):  # the chat belongs to another tenant
            await store.turns.create_turn(conn, scope, turn_params(other_tenant, chat))

        turn = await store.turns.create_turn(conn, scope, turn_params(tenant, chat))
        assert await store.turns.update_progress_at(conn, scope, turn.id) == 1
        if PARTITIONED:
            await conn.execute(
                "INSERT INTO app.messages (id, tenant_id, chat_id, turn_id, body)"
                " VALUES (%s, %s, %s, %s, 'hi')",
                (uuid.uuid4(), tenant, chat, turn.id),
            )
        else:
            await conn.execute(
                "INSERT INTO app.messages (id, chat_id, turn_id, body) VALUES (%s, %s, %s, 'hi')",
                (uuid.uuid4(), chat, turn.id),
            )

        # Deleting the chat cascades to its turns and their messages.
        await conn.execute("DELETE FROM app.chats WHERE id = %s", (chat,))
        cur = await conn.execute("SELECT count(*) FROM app.messages")
        assert await cur.fetchone() == (0,)
        assert await store.turns.update_progress_at(conn, scope, turn.id) == 0
        assert (
            await store.turns.find_by_chat_and_request_id(
                conn, scope, tenant, chat, turn.request_id
            )
            is None
        )
