"""docs/scaling.md's recipe for moving an existing table to the partitioned layout runs and
does what it says: every turn copied, the count check true, the copy served by a store on
the new schema."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_asyncio

from turnstore import AccessScope, DuplicateTurnIdError, TurnState
from turnstore.embedded import temporary_database
from turnstore.postgres import PostgresStore, check_schema, migrate
from turnstore.testing.conformance import complete_params, make_params

DOC = (Path(__file__).parents[2] / "docs" / "scaling.md").read_text(encoding="utf-8")
SECTION = DOC.split("\n## Moving an existing table\n", 1)[1]
(RECIPE,) = re.findall(r"```sql\n(.*?)```", SECTION, re.S)
ALLOW = AccessScope.allow_all()


@pytest.fixture
def dsn(turnstore_admin_dsn: str) -> Iterator[str]:
    with temporary_database(turnstore_admin_dsn, prefix="turnstore_move") as dsn:
        yield dsn


@pytest_asyncio.fixture
async def conn(dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        yield conn


async def test_the_move_recipe_copies_every_turn(
    dsn: str, conn: psycopg.AsyncConnection[Any]
) -> None:
    await migrate(conn)  # the existing, plain table
    tenant = uuid.uuid4()
    async with await PostgresStore.open(dsn) as old, old.connection() as c:
        running = await old.turns.create_turn(c, ALLOW, make_params(tenant_id=tenant))
        done = await old.turns.create_turn(c, ALLOW, make_params(tenant_id=tenant))
        assert await old.turns.cas_update_completed(c, ALLOW, complete_params(done)) == 1
        deleted = await old.turns.create_turn(c, ALLOW, make_params())
        await old.turns.soft_delete(c, ALLOW, deleted.id, None)
        before = [await old.turns.get_turn(c, ALLOW, t.id) for t in (running, done, deleted)]

    # Step 1 of the recipe, then the SQL of steps 3 and 4 as written.
    assert await migrate(conn, "turnstore_p", partitions=16)
    cur = await conn.execute(RECIPE.encode())
    while cur.nextset():  # the INSERT, the ANALYZE, then the check
        pass
    assert await cur.fetchall() == [(True,)]
    assert (await check_schema(conn, "turnstore_p")).partitions == 16

    async with await PostgresStore.open(dsn, schema="turnstore_p") as new, new.connection() as c:
        after = [await new.turns.get_turn(c, ALLOW, t.id) for t in (running, done, deleted)]
        assert after == before
        assert after[0] is not None
        assert after[0].state is TurnState.RUNNING
        # The copied ids stay taken, for every tenant.
        with pytest.raises(DuplicateTurnIdError):
            await new.turns.create_turn(c, ALLOW, make_params(turn_id=running.id))
