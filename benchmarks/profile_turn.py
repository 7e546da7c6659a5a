"""Where a typical turn's client CPU goes: cProfile (process CPU time) over 8 tasks.

Runs typical turns (``begin_turn``, 20 keep-alive writes, ``complete_turn``) through
turnstore, then the same recorded statements through plain psycopg, each for
``--seconds`` under ``cProfile``, and prints the functions with the most time of their own
and the time spent inside turnstore's modules. A fresh database on an embedded server or
``--dsn``.

    python -m benchmarks.profile_turn [--dsn ...] [--seconds 8]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
import uuid

import psycopg

from benchmarks._support import (
    add_loop_argument,
    add_server_arguments,
    benchmark_database,
    run_async,
)
from benchmarks.bench import (
    POOL_SIZE,
    SCHEMA,
    Fixtures,
    Values,
    record_typical_turn,
    replay_per_call,
    run_for,
    typical_turn,
)
from turnstore.lifecycle import TurnLifecycle
from turnstore.postgres import PostgresStore


def report(profile: cProfile.Profile, label: str, turns: int, top: int) -> dict[str, float]:
    stats = pstats.Stats(profile)
    total = sum(entry[2] for entry in stats.stats.values())  # type: ignore[attr-defined]
    own: dict[str, float] = {}
    for (filename, _, _), entry in stats.stats.items():  # type: ignore[attr-defined]
        area = (
            "turnstore"
            if "/turnstore/" in filename
            else "psycopg"
            if "/psycopg" in filename
            else "asyncio"
            if "/asyncio/" in filename
            else "pydantic"
            if "pydantic" in filename
            else "other"
        )
        own[area] = own.get(area, 0.0) + entry[2]
    print(f"\n--- {label}: {turns} turns, {total / max(turns, 1) * 1e6:.0f} us of CPU per turn ---")
    for area, seconds in sorted(own.items(), key=lambda kv: -kv[1]):
        print(f"  {area:10} {seconds / max(turns, 1) * 1e6:8.0f} us/turn ({seconds / total:.0%})")
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(top)
    print(out.getvalue())
    return {area: seconds / max(turns, 1) * 1e6 for area, seconds in own.items()}


async def run(dsn: str, seconds: float, top: int) -> None:
    store = await PostgresStore.open(dsn, schema=SCHEMA, min_size=POOL_SIZE, max_size=POOL_SIZE)
    try:
        await store.migrate()
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aux:
            fixtures = Fixtures(aux, uuid.uuid4(), uuid.uuid4())
            rec = await record_typical_turn(dsn, fixtures)
            lifecycle = TurnLifecycle(store)

            async def turnstore_op(v: Values) -> None:
                await typical_turn(lifecycle, v, fixtures.user)

            async def psycopg_op(v: Values) -> None:
                await replay_per_call(store.pool, rec, v)

            def values() -> Values:
                return fixtures.fresh(1)[0]

            for label, op in (("turnstore", turnstore_op), ("psycopg", psycopg_op)):
                await run_for(1.0, POOL_SIZE, values, op)
                profile = cProfile.Profile(time.process_time)
                profile.enable()
                timing = await run_for(seconds, POOL_SIZE, values, op)
                profile.disable()
                print(f"{label}: {timing.ops / timing.wall:.0f} turns/s under the profiler")
                report(profile, label, timing.ops, top)
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_arguments(parser)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--top", type=int, default=25)
    add_loop_argument(parser)
    args = parser.parse_args(argv)
    with benchmark_database(args, "turnstore_profile") as (_, dsn):
        run_async(run(dsn, args.seconds, args.top), args.loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
