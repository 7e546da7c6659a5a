"""How long migration 0003 (per-tenant keys) blocks writes on a million-turn table.

Loads the benchmarks' dataset (``_dataset.load``, 1M turns by default) into a schema migrated
up to 0002, then applies 0003 twice over, on two fresh copies of that table:

- ``plain``: ``migrate`` builds the three indexes itself, inside its transaction;
- ``prebuilt``: the three indexes are first built with ``CREATE INDEX CONCURRENTLY`` (writes
  go on meanwhile), then ``migrate`` adopts them and only swaps the constraints.

While each migration runs, a probe connection updates one row (a keep-alive write) every
10 ms; the longest of those writes is the time writes were blocked. Prints one line per run.

    python -m benchmarks.migration_0003 --dsn postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import psycopg

import turnstore.postgres.migrations as pgm
from benchmarks._dataset import DatasetShape, load
from turnstore.embedded import temporary_database
from turnstore.postgres import migrate

__all__ = ["main"]

PREBUILD = (
    "CREATE UNIQUE INDEX CONCURRENTLY chat_turns_tenant_chat_request_key"
    " ON turnstore.chat_turns (tenant_id, chat_id, request_id)",
    "CREATE UNIQUE INDEX CONCURRENTLY chat_turns_one_running_per_tenant_chat"
    " ON turnstore.chat_turns (tenant_id, chat_id) WHERE state = 'running' AND deleted_at IS NULL",
    "CREATE INDEX CONCURRENTLY chat_turns_tenant_chat_latest"
    " ON turnstore.chat_turns (tenant_id, chat_id, started_at DESC, id DESC)"
    " WHERE deleted_at IS NULL",
)


async def _probe(dsn: str, stop: asyncio.Event, worst: list[float]) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT id FROM turnstore.chat_turns LIMIT 1")
        row = await cur.fetchone()
        assert row is not None
        while not stop.is_set():
            began = time.perf_counter()
            await conn.execute(
                "UPDATE turnstore.chat_turns SET updated_at = clock_timestamp() WHERE id = %s",
                (row[0],),
            )
            worst.append(time.perf_counter() - began)
            await asyncio.sleep(0.01)


async def _run(dsn: str, shape: DatasetShape, prebuilt: bool) -> dict[str, Any]:
    files = pgm.migration_files()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        real = pgm.migration_files
        pgm.migration_files = lambda partitions=0: [m for m in files if m.version < 3]
        try:
            await migrate(conn)
        finally:
            pgm.migration_files = real
        load(dsn, "turnstore", shape)
        prebuild_secs = 0.0
        if prebuilt:
            began = time.perf_counter()
            for statement in PREBUILD:
                await conn.execute(statement)
            prebuild_secs = time.perf_counter() - began
        stop, latencies = asyncio.Event(), [0.0]
        probe = asyncio.create_task(_probe(dsn, stop, latencies))
        await asyncio.sleep(0.2)
        began = time.perf_counter()
        applied = await migrate(conn)
        migrate_secs = time.perf_counter() - began
        await asyncio.sleep(0.2)
        stop.set()
        await probe
    assert 3 in applied
    return {
        "run": "prebuilt" if prebuilt else "plain",
        "prebuild_concurrently_s": round(prebuild_secs, 2),
        "migrate_s": round(migrate_secs, 3),
        "longest_blocked_write_s": round(max(latencies), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", required=True, help="an admin DSN (a database is created)")
    parser.add_argument("--turns", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    chats = max(args.turns // 10, 1)
    shape = DatasetShape(
        turns=args.turns, chats=chats, running=min(3_000, chats // 10), stale=min(400, chats // 50)
    )
    for prebuilt in (False, True):
        with temporary_database(args.dsn, prefix="turnstore_mig3_bench") as dsn:
            print(asyncio.run(_run(dsn, shape, prebuilt)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
