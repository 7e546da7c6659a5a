"""HOT share of keep-alive writes at several ``chat_turns`` fillfactors, to choose one.

Each run gets a fresh database: the shipped schema, then ``ALTER TABLE ... SET
(fillfactor = N)`` before any row is written, 20,000 turns loaded, and the keep-alive
measurement of ``benchmarks.bench`` (8 writers, 20 writes per stream): 100 streams in
insertion order (adjacent rows, the worst case for page pruning), then 100, 500 and 2,000
streams in random order. Fillfactors run in a random order, ``--repeat`` times each.

    python -m benchmarks.hot_fillfactor [--dsn ...] [--fillfactors 80,70,60] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import uuid
from typing import Any

import psycopg
from psycopg import sql

from benchmarks._dataset import DatasetShape, load
from benchmarks._replay import RecordingCursor
from benchmarks._support import (
    add_server_arguments,
    fresh_database,
    machine_info,
    server,
    write_results,
)
from benchmarks.bench import POOL_SIZE, SCHEMA, Fixtures, bench_hot
from turnstore.postgres import PostgresStore

PRELOADED = DatasetShape(turns=20_000, chats=2_000, running=200, stale=150)


async def measure(dsn: str, fillfactor: int) -> dict[str, float]:
    """HOT shares on a fresh database whose table has ``fillfactor``."""
    store = await PostgresStore.open(dsn, schema=SCHEMA, min_size=POOL_SIZE, max_size=POOL_SIZE)
    try:
        await store.migrate()
        async with store.connection() as conn:
            await conn.execute(
                sql.SQL("ALTER TABLE {} SET (fillfactor = {})").format(
                    sql.Identifier(SCHEMA, "chat_turns"), sql.Literal(fillfactor)
                )
            )
        data = await asyncio.to_thread(load, dsn, SCHEMA, PRELOADED)
        async with await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, cursor_factory=RecordingCursor
        ) as observer:
            fixtures = Fixtures(observer, data.tenant_ids[0], uuid.uuid4())
            shares = {
                "ordered_100": (await bench_hot(store, fixtures, observer, 100, shuffle=False))[
                    "hot_share"
                ]
            }
            for streams in (100, 500, 2000):
                result = await bench_hot(store, fixtures, observer, streams)
                shares[f"random_{streams}"] = result["hot_share"]
        return shares
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_arguments(parser)
    parser.add_argument("--fillfactors", default="80,70,60")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    fillfactors = [int(f) for f in args.fillfactors.split(",")]
    rng = random.Random()
    plan = [f for _ in range(args.repeat) for f in rng.sample(fillfactors, len(fillfactors))]
    runs: list[dict[str, Any]] = []
    with server(args.dsn) as admin_dsn:
        for fillfactor in plan:
            with fresh_database(
                admin_dsn, "turnstore_hot", synchronous_commit=args.synchronous_commit
            ) as dsn:
                shares = asyncio.run(measure(dsn, fillfactor))
            runs.append({"fillfactor": fillfactor, **shares})
            print(json.dumps({k: round(v, 3) for k, v in runs[-1].items()}), flush=True)
        machine = machine_info(admin_dsn)
    path = write_results("hot_fillfactor", {"machine": machine, "runs": runs})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
