"""Client CPU of one keep-alive write, layer by layer: where turnstore's per-call cost sits.

From the bare ``conn.execute`` of the recorded statement up to ``KeepAlive.touch()``, each
layer called 3 x ``--calls`` times in a row on one connection; the best batch's process
CPU per call is printed.

    python -m benchmarks.layers [--dsn ...] [--calls 3000]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

import psycopg

from benchmarks._replay import RecordingCursor, recording
from benchmarks._support import (
    add_loop_argument,
    add_server_arguments,
    benchmark_database,
    run_async,
)
from benchmarks.bench import SCHEMA, Fixtures
from turnstore import AccessScope
from turnstore.lifecycle import TurnLifecycle
from turnstore.postgres import PostgresStore
from turnstore.settings import KeepAliveSettings


async def cpu_per_call(fn: Callable[[], Awaitable[object]], calls: int) -> float:
    """Best of three batches, in microseconds of process CPU per call."""
    for _ in range(200):
        await fn()
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for _ in range(calls):
            await fn()
        best = min(best, (time.process_time() - start) / calls * 1e6)
    return best


async def run(dsn: str, calls: int) -> None:
    store = await PostgresStore.open(dsn, schema=SCHEMA, min_size=1, max_size=1)
    try:
        await store.migrate()
        repo = store.turns
        async with await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, cursor_factory=RecordingCursor
        ) as aux:
            fixtures = Fixtures(aux, uuid.uuid4(), uuid.uuid4())
            values = (await fixtures.running(1))[0]
            scope = AccessScope.for_tenant(values["tenant"])
            turn_id = values["turn"]
            with recording() as log:
                await repo.update_progress_at(aux, scope, turn_id)
        (statement,) = log
        pool = store.pool
        clock = itertools.count(step=3600)
        keep_alive = TurnLifecycle(store).keep_alive(
            scope,
            turn_id,
            settings=KeepAliveSettings(heartbeat=False, batched=False),
            clock=lambda: float(next(clock)),
        )
        conn = await pool.getconn()

        async def execute() -> object:
            return (await conn.execute(statement.query, statement.params)).rowcount

        async def repository() -> object:
            return await repo.update_progress_at(conn, scope, turn_id)

        rows = [
            ("conn.execute of the statement, held connection", await cpu_per_call(execute, calls)),
            ("update_progress_at, held connection", await cpu_per_call(repository, calls)),
        ]
        await pool.putconn(conn)

        async def pooled_execute() -> object:
            c = await pool.getconn()
            try:
                return (await c.execute(statement.query, statement.params)).rowcount
            finally:
                await pool.putconn(c)

        async def store_connection() -> object:
            async with store.connection() as c:
                return await repo.update_progress_at(c, scope, turn_id)

        rows += [
            (
                "pool.getconn + conn.execute + pool.putconn",
                await cpu_per_call(pooled_execute, calls),
            ),
            (
                "store.connection() + update_progress_at",
                await cpu_per_call(store_connection, calls),
            ),
            ("KeepAlive.touch() (every touch due)", await cpu_per_call(keep_alive.touch, calls)),
        ]
        for label, us in rows:
            print(f"{label:50} {us:7.1f} us CPU per call")
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_arguments(parser)
    add_loop_argument(parser)
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args(argv)
    with benchmark_database(args, "turnstore_layers") as (_, dsn):
        run_async(run(dsn, args.calls), args.loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
