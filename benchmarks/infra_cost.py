"""What the infrastructure settings of ``PostgresStore.open`` cost (docs/deploying.md).

The typical turn (``begin_turn``, 20 keep-alive writes, ``complete_turn``: 22 statements) at
8 concurrent tasks on a pool of 8, on stores that differ in one setting each, run side by
side in alternating rounds on one database:

- *bare*: no connection check, no lock timeout (the server's settings);
- *default*: ``check_connections=True``, ``lock_timeout_secs=10``;
- *bounded*: the default plus ``statement_timeout_secs=30``;
- *unprepared*: the default with ``prepare_threshold=None`` (what a transaction pooler
  needs), over a direct connection.

Throughput is reported as a ratio to *bare*; figures vary from run to run on a shared
machine, so compare rows of one run only.

    python -m benchmarks.infra_cost [--dsn postgresql://...] [--seconds 20]
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

import psycopg

from benchmarks._support import (
    add_server_arguments,
    benchmark_database,
    machine_info,
    run_async,
    write_results,
)
from benchmarks.bench import POOL_SIZE, Fixtures, Timing, run_for, typical_turn
from turnstore import PostgresStore, TurnLifecycle
from turnstore.postgres import migrate

__all__ = ["main"]

ROUNDS = 6

VARIANTS: dict[str, dict[str, Any]] = {
    "bare": {"check_connections": False, "lock_timeout_secs": None},
    "default": {},
    "bounded": {"statement_timeout_secs": 30.0},
    "unprepared": {"prepare_threshold": None},
}


async def measure(dsn: str, seconds: float) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await migrate(conn)
    stores = {
        name: await PostgresStore.open(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, **options)
        for name, options in VARIANTS.items()
    }
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aux:
            fixtures = Fixtures(aux, uuid.uuid4(), uuid.uuid4())
            totals = {name: Timing() for name in stores}
            lifecycles = {name: TurnLifecycle(store) for name, store in stores.items()}

            def values() -> dict[str, Any]:
                return fixtures.fresh(1)[0]

            def op_for(name: str) -> Any:
                async def op(v: dict[str, Any]) -> None:
                    await typical_turn(lifecycles[name], v, fixtures.user)

                return op

            for name in stores:  # warm up every pool and statement cache
                await run_for(0.5, POOL_SIZE, values, op_for(name))
            for rnd in range(ROUNDS):
                order = list(stores) if rnd % 2 == 0 else list(reversed(stores))
                for name in order:
                    totals[name].add(
                        await run_for(seconds / ROUNDS, POOL_SIZE, values, op_for(name))
                    )
    finally:
        for store in stores.values():
            await store.close()
    rows = {name: timing.summary() for name, timing in totals.items()}
    bare = rows["bare"]["ops_per_s"]
    for row in rows.values():
        row["ratio_vs_bare"] = row["ops_per_s"] / bare
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_arguments(parser)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per store")
    args = parser.parse_args(argv)
    with benchmark_database(args, "turnstore_infra") as (admin_dsn, dsn):
        rows = run_async(measure(dsn, args.seconds))
        info = machine_info(admin_dsn)
    print(f"typical turn, {POOL_SIZE} tasks on a pool of {POOL_SIZE}:")
    for name, row in rows.items():
        print(
            f"  {name:<10} {row['ops_per_s']:7.0f} turns/s  x{row['ratio_vs_bare']:.3f}"
            f"  median {row['median_us'] / 1000:.2f} ms  client CPU {row['client_cpu_us']:.0f} us"
        )
    path = write_results("infra_cost", {"machine": info, "typical_turn": rows})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
