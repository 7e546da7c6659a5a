"""docs/schema.md names only what the migrations create (the other direction, against a
migrated database, is ``tests/postgres/test_docs_schema.py``)."""

from __future__ import annotations

import re
from pathlib import Path

DOC = (Path(__file__).parents[2] / "docs" / "schema.md").read_text(encoding="utf-8")


def test_the_documented_names_exist_in_the_migration() -> None:
    """The reverse direction, without a database: every chat_turns_* name in the doc is
    created by a migration file (of either layout). The partitions and their indexes
    (``..._p<n>``) are named by the partitioned 0001's loop, not written out."""
    sql_text = "".join(
        p.read_text()
        for p in (Path(__file__).parents[2] / "src" / "turnstore" / "sql").glob("**/*.sql")
    )
    documented = {
        name for name in re.findall(r"`(chat_turns_\w+)`", DOC) if not re.search(r"_p[0-9]+$", name)
    } - {"chat_turns_pkey"}
    assert documented
    assert sorted(n for n in documented if n not in sql_text) == []
