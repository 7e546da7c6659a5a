"""Driver errors on the paths nearly every call takes (a scoped UPDATE, taking an autocommit
connection) come out as ``StoreUnavailableError`` (``PoolTimeoutError`` for a pool with no
free connection), chained to the driver's error."""

from __future__ import annotations

import uuid

import psycopg
import psycopg_pool
import pytest

from turnstore import AccessScope, PoolTimeoutError, StoreUnavailableError
from turnstore.postgres import PostgresStore


async def test_lost_connection_during_a_scoped_update_is_store_unavailable(
    turnstore_pg_dsn: str,
) -> None:
    async with (
        await PostgresStore.open(turnstore_pg_dsn, max_size=2) as store,
        await psycopg.AsyncConnection.connect(turnstore_pg_dsn, autocommit=True) as other,
    ):
        async with store.connection() as conn:
            await other.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
            with pytest.raises(StoreUnavailableError) as info:
                await store.turns.update_progress_at(conn, AccessScope.allow_all(), uuid.uuid4())
        assert isinstance(info.value.__cause__, psycopg.OperationalError)


async def test_no_free_connection_is_a_pool_timeout(turnstore_pg_dsn: str) -> None:
    async with await PostgresStore.open(turnstore_pg_dsn, max_size=1, timeout=0.5) as store:
        async with store.connection():
            with pytest.raises(PoolTimeoutError) as info:
                async with store.connection():
                    pass
        assert isinstance(info.value.__cause__, psycopg_pool.PoolTimeout)
