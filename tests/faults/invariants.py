"""What must hold after any fault: no connection leaked by the pool, no session left idle
in a transaction, no advisory lock left behind, no half-finalized turn."""

from __future__ import annotations

import asyncio

import psycopg

from turnstore.errors import TurnStoreError
from turnstore.postgres import PostgresStore

__all__ = ["assert_clean", "assert_typed", "count_turns", "leaked_connections"]

#: A turn whose state, timestamps and fields disagree: terminal without completed_at,
#: running with one, completed with an error code or without a message, failed without an
#: error code, or times out of order. The CHECK constraints refuse most of these; this
#: query proves none slipped through.
_HALF_FINALIZED = """
SELECT count(*) FROM turnstore.chat_turns
WHERE (state = 'running') <> (completed_at IS NULL)
   OR (state = 'running' AND last_progress_at IS NULL)
   OR (state = 'completed' AND (assistant_message_id IS NULL OR error_code IS NOT NULL))
   OR (state = 'failed' AND error_code IS NULL)
   OR completed_at < started_at
   OR updated_at < started_at
"""

_IDLE_IN_TRANSACTION = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND state LIKE 'idle in transaction%'
"""

_ADVISORY_LOCKS = """
SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
WHERE l.locktype = 'advisory' AND d.datname = current_database()
"""


def leaked_connections(store: PostgresStore) -> int:
    """Connections the store's pool has handed out and not got back."""
    stats = store.pool.get_stats()
    return int(stats.get("pool_size", 0)) - int(stats.get("pool_available", 0))


async def count_turns(dsn: str, where: str = "true") -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(f"SELECT count(*) FROM turnstore.chat_turns WHERE {where}")
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def assert_clean(store: PostgresStore, dsn: str, *, settle_secs: float = 10.0) -> None:
    """The invariants after a fault; connections and sessions get ``settle_secs`` to come
    back (a pool returns a connection after its reset, a server ends a killed session)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settle_secs
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:

        async def value(query: str) -> int:
            row = await (await admin.execute(query)).fetchone()
            assert row is not None
            return int(row[0])

        while True:
            found = {
                "leaked pool connections": leaked_connections(store),
                "sessions idle in transaction": await value(_IDLE_IN_TRANSACTION),
                "advisory locks": await value(_ADVISORY_LOCKS),
                "half-finalized turns": await value(_HALF_FINALIZED),
            }
            if not any(found.values()) or loop.time() > deadline:
                break
            await asyncio.sleep(0.1)
    assert not any(found.values()), (found, store.pool.get_stats())


def assert_typed(errors: list[BaseException]) -> None:
    """Every error a caller saw is a turnstore error, never a raw driver error."""
    raw = [
        f"{type(e).__module__}.{type(e).__name__}: {e}"[:200]
        for e in errors
        if not isinstance(e, TurnStoreError)
    ]
    assert not raw, f"{len(raw)} untyped errors, first: {raw[:3]}"
