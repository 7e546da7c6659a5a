"""The keep-alive hub against per-turn keep-alive writes, side by side in one run.

    python -m benchmarks.hub_bench --dsn postgresql://postgres@127.0.0.1:5432/postgres

1. ``STREAMS`` streams in one process, heartbeat every ``INTERVAL`` s, for ``SECONDS`` s,
   first per turn (``batched=False``), then through the store's hub: statements per second
   (counted in the client, and the database's ``xact_commit``), client and server CPU per
   stream (``time.process_time``; ``/proc/<pid>/stat`` of the pool's backends), p99 lag
   from due (the previous write sent + the interval) to written, and the HOT share.
2. The typical turn (``begin_turn``, 20 keep-alive writes, ``complete_turn``) at
   ``TURN_TASKS`` concurrent streams, its keep-alive writes through the hub (each touch
   waits for the tick that writes it), against pgbench running the same turn statement by
   statement, and the per-turn typical turn of ``benchmarks.bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from benchmarks import bench
from benchmarks._support import (
    add_server_arguments,
    benchmark_database,
    machine_info,
    percentile,
    pgbench_binary,
    write_results,
)
from turnstore import AccessScope, CreateTurnParams, RequesterType
from turnstore.hub import DEFAULT_STRIPES, KeepAliveHub
from turnstore.ids import new_uuid7
from turnstore.keepalive import KeepAlive
from turnstore.lifecycle import TurnLifecycle
from turnstore.postgres import PostgresStore
from turnstore.settings import KeepAliveSettings

SCHEMA = bench.SCHEMA
STREAMS = 2000
INTERVAL = 1.0
SECONDS = 20.0
POOL = 8
TURN_TASKS = 64
TURN_SECONDS = 10.0
APP = "turnstore-hub-bench"
_TICK = os.sysconf("SC_CLK_TCK")


class CountingRepo:
    """The store's repository, recording when each turn's keep-alive was sent and written."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.statements = 0
        self.sent: dict[UUID, list[float]] = defaultdict(list)
        self.written: dict[UUID, list[float]] = defaultdict(list)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def update_progress_at(self, runner: Any, scope: AccessScope, turn_id: UUID) -> int:
        sent = time.monotonic()
        rows: int = await self.inner.update_progress_at(runner, scope, turn_id)
        self.statements += 1
        self.sent[turn_id].append(sent)
        self.written[turn_id].append(time.monotonic())
        return rows

    async def touch_turns(self, runner: Any, targets: Sequence[tuple[AccessScope, UUID]]) -> Any:
        sent = time.monotonic()
        result = await self.inner.touch_turns(runner, targets)
        done = time.monotonic()
        self.statements += 1
        for _scope, turn_id in targets:
            self.sent[turn_id].append(sent)
            self.written[turn_id].append(done)
        return result


class CountingStore:
    """A PostgreSQL store whose repository counts, with a hub of its own over it."""

    def __init__(self, inner: PostgresStore, stripes: int) -> None:
        self.inner = inner
        self.turns = CountingRepo(inner.turns)
        self.hub = KeepAliveHub(self, stripes=stripes)  # type: ignore[arg-type]

    def keepalive_hub(self) -> KeepAliveHub:
        return self.hub

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _server_ticks(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


async def _backend_pids(aux: bench.Conn) -> list[int]:
    cur = await aux.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = %s",
        (APP,),
    )
    return [r[0] for r in await cur.fetchall()]


async def _commits(aux: bench.Conn) -> int:
    await aux.execute("SELECT pg_stat_clear_snapshot()")
    cur = await aux.execute(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def running_turns(aux: bench.Conn, n: int) -> list[bench.Values]:
    """``n`` running turns inserted in id order (UUIDv7, as ``new_uuid7`` makes them), each
    of a tenant of its own: the rows of streams that started one after another."""
    ids = [new_uuid7() for _ in range(n)]
    tenants = [uuid.uuid4() for _ in range(n)]
    await aux.execute(
        sql.SQL(
            "INSERT INTO {} (id, tenant_id, chat_id, request_id, requester_type,"
            " requester_user_id, state, started_at, last_progress_at, updated_at)"
            " SELECT id, tenant, gen_random_uuid(), gen_random_uuid(), 'user',"
            " gen_random_uuid(), 'running', t, t, t"
            " FROM unnest(%s::uuid[], %s::uuid[]) WITH ORDINALITY AS u(id, tenant, n),"
            " LATERAL (SELECT clock_timestamp() AS t) AS clock ORDER BY n"
        ).format(sql.Identifier(SCHEMA, "chat_turns")),
        (ids, tenants),
    )
    return [{"tenant": t, "turn": i} for i, t in zip(ids, tenants, strict=True)]


async def streams_run(
    dsn: str, aux: bench.Conn, *, batched: bool, streams: int, stripes: int
) -> dict[str, Any]:
    pg = await PostgresStore.open(
        f"{dsn} application_name={APP}", schema=SCHEMA, min_size=POOL, max_size=POOL
    )
    store = CountingStore(pg, stripes)
    try:
        turns = await running_turns(aux, streams)
        lifecycle = TurnLifecycle(store)  # type: ignore[arg-type]
        settings = KeepAliveSettings(
            interval_secs=INTERVAL, orphan_timeout_secs=300, batched=batched
        )
        pids = await _backend_pids(aux)
        before_upd = await bench._table_updates(aux)
        entered: dict[UUID, float] = {}
        start_gate = asyncio.Event()

        async def stream(v: bench.Values) -> None:
            scope = AccessScope.for_tenant(v["tenant"])
            await start_gate.wait()
            async with lifecycle.keep_alive(scope, v["turn"], settings=settings):
                entered[v["turn"]] = time.monotonic()
                await asyncio.sleep(SECONDS)

        tasks = [asyncio.create_task(stream(v)) for v in turns]
        start_gate.set()
        # The window: from one interval in (every stream entered) to one before the end
        # (no stream has left yet), so entering and leaving are not measured.
        await asyncio.sleep(INTERVAL)
        commits, ticks = await _commits(aux), _server_ticks(pids)
        cpu, wall, count = time.process_time(), time.monotonic(), store.turns.statements
        await asyncio.sleep(SECONDS - 2 * INTERVAL)
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
        ticks = _server_ticks(pids) - ticks
        commits = await _commits(aux) - commits
        count = store.turns.statements - count
        await asyncio.gather(*tasks)
        async with bench.held(pg.pool, POOL) as conns:
            upd, hot = await bench.updates_delta(aux, conns, before_upd, store.turns.statements)
        lags: list[float] = []
        for turn_id, written in store.turns.written.items():
            sent = store.turns.sent[turn_id]
            due = entered[turn_id] + INTERVAL
            for i, done in enumerate(written):
                lags.append(max(0.0, done - due))
                due = sent[i] + INTERVAL
        writes = sum(len(w) for w in store.turns.written.values())
        whole = SECONDS
        return {
            "mode": f"hub ({stripes} stripes)" if batched else "per-turn",
            "streams": streams,
            "seconds": wall,
            "statements_per_s": count / wall,
            "xact_commit_per_s": commits / wall,
            "writes_per_s": writes / whole,
            "client_cpu_us_per_stream_s": cpu / wall / streams * 1e6,
            "server_cpu_us_per_stream_s": ticks / _TICK / wall / streams * 1e6,
            "lag_p50_ms": percentile(lags, 0.50) * 1e3,
            "lag_p99_ms": percentile(lags, 0.99) * 1e3,
            "lag_max_ms": max(lags) * 1e3,
            "hot_share": hot / upd if upd else float("nan"),
            "n_tup_upd_delta": upd,
        }
    finally:
        await store.hub.close()
        await pg.close()


class _Waiting(KeepAlive[Any]):
    """A keep-alive that lets its stream wait for the hub's write of its touch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wrote = asyncio.Event()

    def _hub_wrote(self, running: bool) -> None:
        super()._hub_wrote(running)
        self.wrote.set()


async def hub_typical_turn(store: PostgresStore, v: bench.Values, user: UUID) -> None:
    """``bench.typical_turn`` with its 20 keep-alive writes through the hub."""
    lifecycle = TurnLifecycle(store)
    scope = AccessScope.for_tenant(v["tenant"])
    outcome = await lifecycle.begin_turn(
        scope,
        CreateTurnParams(
            id=v["turn"],
            tenant_id=v["tenant"],
            chat_id=v["chat"],
            request_id=v["request"],
            requester_type=RequesterType.USER,
            requester_user_id=user,
        ),
    )
    turn = outcome.turn
    if turn is None:
        raise RuntimeError(f"a typical turn did not start: {outcome}")
    settings = KeepAliveSettings(interval_secs=0.001, heartbeat=False, batched=True)
    keep_alive = _Waiting(store, scope, turn.id, settings)
    async with keep_alive:
        for _ in range(bench.KEEP_ALIVES):
            keep_alive.wrote.clear()
            await keep_alive.touch()
            await keep_alive.wrote.wait()
    if not (await lifecycle.complete_turn(scope, turn, v["message"])).won:
        raise RuntimeError("a typical turn did not complete")


async def turns_run(dsn: str, fixtures: bench.Fixtures, pgbench: str | None) -> dict[str, Any]:
    store = await PostgresStore.open(dsn, schema=SCHEMA, min_size=POOL, max_size=POOL)
    try:
        recording = await bench.record_typical_turn(dsn, fixtures)
        user = fixtures.user
        lifecycle = TurnLifecycle(store)

        def values() -> bench.Values:
            return fixtures.fresh(1)[0]

        async def hub_op(v: bench.Values) -> None:
            await hub_typical_turn(store, v, user)

        async def per_turn_op(v: bench.Values) -> None:
            await bench.typical_turn(lifecycle, v, user)

        out: dict[str, Any] = {
            "tasks": TURN_TASKS,
            "statements_per_turn": len(recording.statements),
        }
        for name, op in (("hub", hub_op), ("per_turn", per_turn_op)):
            await bench.run_for(1.0, TURN_TASKS, values, op)
            out[name] = (await bench.run_for(TURN_SECONDS, TURN_TASKS, values, op)).summary()
        out["hub_statements"] = store.keepalive_hub().statements
        if pgbench is not None:
            script = bench._pgbench_script(recording, dsn)
            out["pgbench"] = await asyncio.to_thread(
                bench.run_pgbench, pgbench, dsn, script, TURN_TASKS, TURN_SECONDS
            )
            for name in ("hub", "per_turn"):
                out[f"{name}_vs_pgbench"] = out[name]["ops_per_s"] / out["pgbench"]["ops_per_s"]
        return out
    finally:
        await store.close()


async def run(
    dsn: str, admin_dsn: str, streams: int, stripes: list[int], turns: bool
) -> dict[str, Any]:
    setup = await PostgresStore.open(dsn, schema=SCHEMA, min_size=1, max_size=1)
    await setup.migrate()
    await setup.close()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aux:
        fixtures = bench.Fixtures(aux, uuid.uuid4(), uuid.uuid4())
        out: dict[str, Any] = {"streams": []}
        for batched, n in [(False, 1), *((True, n) for n in stripes)]:
            row = await streams_run(dsn, aux, batched=batched, streams=streams, stripes=n)
            print(row, flush=True)
            out["streams"].append(row)
        if turns:
            out["typical_turn"] = await turns_run(dsn, fixtures, pgbench_binary(admin_dsn))
            print(out["typical_turn"], flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    global SECONDS, TURN_SECONDS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="200 streams, short runs")
    parser.add_argument("--stripes", type=int, nargs="+", default=[DEFAULT_STRIPES])
    parser.add_argument("--no-turns", action="store_true", help="skip the typical turn")
    args = parser.parse_args(argv)
    streams = 200 if args.quick else STREAMS
    if args.quick:
        SECONDS, TURN_SECONDS = 5.0, 3.0
    with benchmark_database(args, "turnstore_hub_bench") as (admin_dsn, dsn):
        machine = machine_info(admin_dsn)
        results = asyncio.run(run(dsn, admin_dsn, streams, args.stripes, not args.no_turns))
    path = write_results(
        "hub_bench", {"machine": machine, "quick": args.quick, "interval_s": INTERVAL} | results
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
