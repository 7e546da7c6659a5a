"""The whole conformance suite in an oddly named schema, plus proof that it ran there."""

import psycopg
from psycopg import sql

from turnstore.scope import AccessScope
from turnstore.testing.backends import BackendHarness
from turnstore.testing.conformance import *  # noqa: F403
from turnstore.testing.conformance import make_params


async def test_rows_land_in_the_overridden_schema_only(
    turnstore_backend: BackendHarness, turnstore_pg_dsn: str, turnstore_schema: str
) -> None:
    assert turnstore_backend.name == "postgres"
    assert turnstore_schema != "turnstore"
    store = turnstore_backend.store
    async with store.connection() as runner:
        turn = await store.turns.create_turn(runner, AccessScope.allow_all(), make_params())
    async with await psycopg.AsyncConnection.connect(turnstore_pg_dsn) as conn:
        cur = await conn.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'chat_turns'"
        )
        assert [row[0] for row in await cur.fetchall()] == [turnstore_schema]
        query = sql.SQL("SELECT id FROM {}.chat_turns").format(sql.Identifier(turnstore_schema))
        cur = await conn.execute(query)
        assert [row[0] for row in await cur.fetchall()] == [turn.id]
