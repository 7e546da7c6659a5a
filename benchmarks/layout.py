"""The typical turn on the partitioned layout next to the plain one, run side by side.

Two fresh databases on one server, one migrated plain, one with ``--partitions`` (default
16) hash partitions (docs/schema.md, *The partitioned layout*), each preloaded with
``--turns`` terminal turns over ``--tenants`` tenants. Then rounds alternate between the
two: each round runs typical turns (``begin_turn``, 20 keep-alive writes,
``complete_turn``: benchmarks/bench.py) for ``--seconds`` on one layout and then on the
other, with 1 task and with 8 tasks on a pool of 8. ``synchronous_commit`` is off for both
databases unless ``--synchronous-commit`` (a disk flush per commit would hide the rest), and
``--plan-cache-mode`` sets PostgreSQL's ``plan_cache_mode`` on both. Reports turns per
second per layout (the median over rounds) and the ratio partitioned / plain: alternating
rounds put both layouts under the same neighbours' load.

    python -m benchmarks.layout [--dsn postgresql://...] [--partitions 16] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import uuid
from typing import Any

import psycopg
from psycopg import sql

from benchmarks._support import (
    add_server_arguments,
    fresh_database,
    machine_info,
    server,
    write_results,
)
from benchmarks.bench import POOL_SIZE, run_for, typical_turn
from turnstore.lifecycle import TurnLifecycle
from turnstore.postgres import PostgresStore

Values = dict[str, uuid.UUID]

PRELOAD = """
INSERT INTO turnstore.chat_turns (id, tenant_id, chat_id, request_id, requester_type,
    requester_user_id, state, started_at, last_progress_at, completed_at, updated_at)
SELECT gen_random_uuid(), t.tenant_id, gen_random_uuid(), gen_random_uuid(), 'user',
       gen_random_uuid(), 'completed', now(), now(), now(), now()
FROM generate_series(1, %s) AS i,
     LATERAL (SELECT (%s::uuid[])[1 + i %% %s] AS tenant_id) AS t
"""


async def _open(
    dsn: str, partitions: int, turns: int, tenants: list[uuid.UUID], plan_cache_mode: str
) -> PostgresStore:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        database = sql.Identifier(conn.info.dbname)
        await conn.execute(
            sql.SQL("ALTER DATABASE {} SET plan_cache_mode = {}").format(
                database, sql.Literal(plan_cache_mode)
            )
        )
    store = await PostgresStore.open(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
    await store.migrate(partitions=partitions)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(PRELOAD, (turns, tenants, len(tenants)))
        await conn.execute("VACUUM ANALYZE turnstore.chat_turns")
    return store


async def measure(
    plain_dsn: str, part_dsn: str, partitions: int, args: argparse.Namespace
) -> dict[str, Any]:
    tenants = [uuid.uuid4() for _ in range(args.tenants)]
    stores = {
        "plain": await _open(plain_dsn, 0, args.turns, tenants, args.plan_cache_mode),
        "partitioned": await _open(part_dsn, partitions, args.turns, tenants, args.plan_cache_mode),
    }
    user = uuid.uuid4()
    counter = iter(range(10**9))

    def values() -> Values:
        return {
            "tenant": tenants[next(counter) % len(tenants)],
            "turn": uuid.uuid4(),
            "chat": uuid.uuid4(),
            "request": uuid.uuid4(),
            "message": uuid.uuid4(),
        }

    rates: dict[str, dict[int, list[float]]] = {name: {1: [], 8: []} for name in stores}
    try:
        lifecycles = {name: TurnLifecycle(store) for name, store in stores.items()}
        for lifecycle in lifecycles.values():  # warm up: prepared statements, caches
            await run_for(1.0, 1, values, lambda v, lc=lifecycle: typical_turn(lc, v, user))
        for round_no in range(args.rounds):
            order = list(lifecycles) if round_no % 2 == 0 else list(reversed(lifecycles))
            for tasks in (1, 8):
                for name in order:
                    lifecycle = lifecycles[name]
                    timing = await run_for(
                        args.seconds,
                        tasks,
                        values,
                        lambda v, lc=lifecycle: typical_turn(lc, v, user),
                    )
                    rates[name][tasks].append(timing.ops / timing.wall)
    finally:
        for store in stores.values():
            await store.close()
    result: dict[str, Any] = {}
    for tasks in (1, 8):
        plain = statistics.median(rates["plain"][tasks])
        part = statistics.median(rates["partitioned"][tasks])
        result[f"{tasks}_task"] = {
            "plain_turns_per_s": plain,
            "partitioned_turns_per_s": part,
            "ratio": part / plain,
            "rounds": {name: rates[name][tasks] for name in rates},
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_arguments(parser)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--turns", type=int, default=200_000, help="preloaded, per database")
    parser.add_argument("--tenants", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="per layout, per round")
    parser.add_argument(
        "--plan-cache-mode",
        choices=("auto", "force_custom_plan", "force_generic_plan"),
        default="auto",
        help="PostgreSQL's plan_cache_mode on both databases (default: the server's auto)",
    )
    parser.add_argument("--quick", action="store_true", help="20,000 turns, 2 rounds of 2 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.turns, args.rounds, args.seconds = 20_000, 2, 2.0
    with (
        server(args.dsn) as admin_dsn,
        fresh_database(
            admin_dsn, "turnstore_layout_plain", synchronous_commit=args.synchronous_commit
        ) as plain_dsn,
        fresh_database(
            admin_dsn, "turnstore_layout_part", synchronous_commit=args.synchronous_commit
        ) as part_dsn,
    ):
        machine = machine_info(admin_dsn)
        print(
            f"{args.turns:,} turns preloaded per database, {args.tenants} tenants; "
            f"{args.rounds} rounds of {args.seconds} s per layout ...",
            flush=True,
        )
        result = asyncio.run(measure(plain_dsn, part_dsn, args.partitions, args))
    print(f"{'':8} {'plain turns/s':>14} {'partitioned':>12} {'ratio':>6}")
    for key, row in result.items():
        print(
            f"{key:8} {row['plain_turns_per_s']:>14.1f} {row['partitioned_turns_per_s']:>12.1f}"
            f" {row['ratio']:>6.2f}"
        )
    path = write_results(
        "layout",
        {"machine": machine, "partitions": args.partitions, "args": vars(args), "result": result},
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
