"""turnstore next to plain psycopg and pgbench running the same SQL (issue 5, items 1-3, 5).

For each repository method, and for a *typical turn* (``begin_turn``, 20 keep-alive writes,
``complete_turn``), the median and p99 latency and the throughput with 1 connection and with
8 concurrent tasks on a pool of 8. The baselines run the statements turnstore sent,
recorded from a real call (``benchmarks._replay``), so no copy of the SQL can drift:

- *psycopg*: the recorded statements through ``AsyncConnection.execute`` on the very same
  pooled connections (same autocommit, same prepare threshold, same pool), rows fetched as
  tuples: what a careful hand-written data layer does;
- *pgbench*: the recorded statements as a custom script (``-M prepared``), one script run
  per typical turn.

Also: the share of heap-only (HOT) updates among keep-alive writes, and typical turns per
second on the in-memory fake with a million turns stored.

    python -m benchmarks.bench [--dsn postgresql://...] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import gc
import itertools
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import psycopg_pool
from psycopg import sql

from benchmarks._dataset import DatasetShape, load
from benchmarks._replay import Recording, RecordingCursor, Statement, recording
from benchmarks._support import (
    add_loop_argument,
    add_server_arguments,
    benchmark_database,
    machine_info,
    pgbench_binary,
    run_async,
    summarize,
    write_results,
)
from turnstore import (
    AccessScope,
    CasCompleteParams,
    CasTerminalParams,
    CreateTurnParams,
    RequesterType,
    ToolCallType,
    TurnState,
    UpdatePreflightParams,
)
from turnstore.lifecycle import TurnLifecycle
from turnstore.memory import InMemoryStore
from turnstore.postgres import PostgresStore, PostgresTurnRepository
from turnstore.settings import KeepAliveSettings

SCHEMA = "turnstore"
KEEP_ALIVES = 20
ORPHAN_TIMEOUT_S = 300
POOL_SIZE = 8
#: Rows a repeatable method cycles over; a multiple of ``POOL_SIZE`` so concurrent tasks
#: never touch the same row (no lock waits in the measurement).
CYCLE = 64

Conn = psycopg.AsyncConnection[Any]
Values = dict[str, UUID]


@dataclass(frozen=True)
class Settings:
    method_ops: int
    rounds: int
    turn_seconds: float
    dataset_turns: int
    fake_turns: int
    fake_measured: int
    #: Concurrent streams in each HOT measurement: fewer streams, more writers per page.
    hot_streams: tuple[int, ...]


FULL = Settings(
    method_ops=1500,
    rounds=6,
    turn_seconds=12.0,
    dataset_turns=200_000,
    fake_turns=1_000_000,
    fake_measured=5_000,
    hot_streams=(100, 500, 2000),
)
QUICK = Settings(
    method_ops=120,
    rounds=2,
    turn_seconds=2.0,
    dataset_turns=20_000,
    fake_turns=20_000,
    fake_measured=500,
    hot_streams=(100,),
)


# --------------------------------------------------------------------------- fixtures


class Fixtures:
    """Rows the measured calls work on, made with plain SQL outside any measurement."""

    def __init__(self, conn: Conn, tenant: UUID, user: UUID) -> None:
        self.conn = conn
        self.tenant = tenant
        self.user = user
        self._insert = sql.SQL(
            "INSERT INTO {} (id, tenant_id, chat_id, request_id, requester_type,"
            " requester_user_id, state, started_at, last_progress_at, updated_at)"
            " SELECT gen_random_uuid(), %(tenant)s, gen_random_uuid(), gen_random_uuid(),"
            " 'user', %(user)s, 'running', t, t, t"
            " FROM generate_series(1, %(n)s), LATERAL (SELECT clock_timestamp()"
            "   - make_interval(secs => %(age)s) AS t) AS clock"
            " RETURNING id, chat_id, request_id"
        ).format(sql.Identifier(SCHEMA, "chat_turns"))

    async def running(self, n: int, *, stale: bool = False) -> list[Values]:
        """``n`` new running turns, each in a chat of its own (stale: no progress for 1 h)."""
        age = 3600 if stale else 0
        cur = await self.conn.execute(
            self._insert, {"tenant": self.tenant, "user": self.user, "n": n, "age": age}
        )
        return [
            {"tenant": self.tenant, "turn": t, "chat": c, "request": r}
            for t, c, r in await cur.fetchall()
        ]

    def fresh(self, n: int) -> list[Values]:
        """``n`` sets of new ids: a new turn in a new chat."""
        return [
            {
                "tenant": self.tenant,
                "turn": uuid.uuid4(),
                "chat": uuid.uuid4(),
                "request": uuid.uuid4(),
                "message": uuid.uuid4(),
            }
            for _ in range(n)
        ]


# --------------------------------------------------------------------------- methods

Call = Callable[[PostgresTurnRepository, Conn, Values, UUID], Awaitable[object]]


@dataclass(frozen=True)
class MethodCase:
    """How to call one repository method, and which rows it needs."""

    name: str
    call: Call
    #: "fresh" (new ids), "running" (cycled), "consume" (one new running turn per call),
    #: "stale" (one new stale turn per call), "orphans" (the stale pool, cycled).
    rows: str
    in_transaction: bool = False


@functools.lru_cache(maxsize=256)
def _tenant_scope(tenant: UUID) -> AccessScope:
    return AccessScope.for_tenant(tenant)


def _scope(v: Values) -> AccessScope:
    """The caller's scope. A host builds it once per request from its auth context and
    passes it to every call, so it is built once here too, not inside the measurement."""
    return _tenant_scope(v["tenant"])


async def _create_turn(repo: PostgresTurnRepository, c: Conn, v: Values, user: UUID) -> object:
    params = CreateTurnParams(
        id=v["turn"],
        tenant_id=v["tenant"],
        chat_id=v["chat"],
        request_id=v["request"],
        requester_type=RequesterType.USER,
        requester_user_id=user,
    )
    return await repo.create_turn(c, _scope(v), params)


async def _find_by_request(repo: PostgresTurnRepository, c: Conn, v: Values, _: UUID) -> object:
    return await repo.find_by_chat_and_request_id(
        c, _scope(v), v["tenant"], v["chat"], v["request"]
    )


async def _find_running(repo: PostgresTurnRepository, c: Conn, v: Values, _: UUID) -> object:
    return await repo.find_running_by_chat_id(c, _scope(v), v["tenant"], v["chat"])


async def _cas_state(repo: PostgresTurnRepository, c: Conn, v: Values, _: UUID) -> object:
    params = CasTerminalParams(turn_id=v["turn"], state=TurnState.CANCELLED)
    return await repo.cas_update_state(c, _scope(v), params)


async def _cas_completed(repo: PostgresTurnRepository, c: Conn, v: Values, _: UUID) -> object:
    params = CasCompleteParams(turn_id=v["turn"], assistant_message_id=v["turn"])
    return await repo.cas_update_completed(c, _scope(v), params)


async def _set_message(repo: PostgresTurnRepository, c: Conn, v: Values, _: UUID) -> object:
    await repo.set_assistant_message_id(c, _scope(v), v["turn"], v["chat"])
    return None


async def _soft_delete(repo: PostgresTurnRepository, c: Conn, v: Values, _: UUID) -> object:
    await repo.soft_delete(c, _scope(v), v["turn"], v["request"])
    return None


async def _find_latest(repo: PostgresTurnRepository, c: Conn, v: Values, _: UUID) -> object:
    return await repo.find_latest_turn(c, _scope(v), v["tenant"], v["chat"])


async def _progress(repo: PostgresTurnRepository, c: Conn, v: Values, _: UUID) -> object:
    return await repo.update_progress_at(c, _scope(v), v["turn"])


async def _orphans(repo: PostgresTurnRepository, c: Conn, v: Values, _: UUID) -> object:
    return await repo.find_orphan_candidates(c, ORPHAN_TIMEOUT_S, 100)


async def _finalize_orphan(repo: PostgresTurnRepository, c: Conn, v: Values, _: UUID) -> object:
    return await repo.cas_finalize_orphan(c, v["turn"], ORPHAN_TIMEOUT_S)


async def _latest_for_update(repo: PostgresTurnRepository, c: Conn, v: Values, _: UUID) -> object:
    return await repo.find_latest_for_update(c, _scope(v), v["tenant"], v["chat"])


async def _preflight(repo: PostgresTurnRepository, c: Conn, v: Values, _: UUID) -> object:
    params = UpdatePreflightParams(
        turn_id=v["turn"],
        reserve_tokens=8192,
        max_output_tokens_applied=4096,
        reserved_credits_micro=1500,
        policy_version_applied=7,
        effective_model="gpt-4o-mini",
        minimal_generation_floor_applied=256,
    )
    return await repo.update_preflight_fields(c, _scope(v), params)


async def _tool(repo: PostgresTurnRepository, c: Conn, v: Values, _: UUID) -> object:
    await repo.increment_tool_calls(c, _scope(v), v["turn"], ToolCallType.WEB_SEARCH)
    return None


METHODS: tuple[MethodCase, ...] = (
    MethodCase("create_turn", _create_turn, "fresh"),
    MethodCase("find_by_chat_and_request_id", _find_by_request, "running"),
    MethodCase("find_running_by_chat_id", _find_running, "running"),
    MethodCase("cas_update_state", _cas_state, "consume"),
    MethodCase("cas_update_completed", _cas_completed, "consume"),
    MethodCase("set_assistant_message_id", _set_message, "running"),
    MethodCase("soft_delete", _soft_delete, "consume"),
    MethodCase("find_latest_turn", _find_latest, "running"),
    MethodCase("update_progress_at", _progress, "running"),
    MethodCase("find_orphan_candidates", _orphans, "orphans"),
    MethodCase("cas_finalize_orphan", _finalize_orphan, "stale"),
    MethodCase("find_latest_for_update", _latest_for_update, "running", in_transaction=True),
    MethodCase("update_preflight_fields", _preflight, "running"),
    MethodCase("increment_tool_calls", _tool, "running"),
)


# --------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Latencies of one batch of calls, its wall time, and the client process's CPU time
    (which a busy server or a noisy neighbour disturbs far less than latency)."""

    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    cpu: float = 0.0
    ops: int = 0

    def add(self, other: Timing) -> None:
        self.latencies.extend(other.latencies)
        self.wall += other.wall
        self.cpu += other.cpu
        self.ops += other.ops

    def summary(self) -> dict[str, float]:
        out = summarize(self.latencies, self.wall, self.ops)
        out["client_cpu_us"] = self.cpu / self.ops * 1e6 if self.ops else 0.0
        return out


async def timed(
    conns: Sequence[Conn], inputs: Sequence[Values], op: Callable[[Conn, Values], Awaitable[Any]]
) -> Timing:
    """Run ``op`` once per input, spread over one task per connection."""
    timing = Timing(ops=len(inputs))
    perf = time.perf_counter

    async def worker(task: int, conn: Conn) -> None:
        for i in range(task, len(inputs), len(conns)):
            start = perf()
            await op(conn, inputs[i])
            timing.latencies.append(perf() - start)

    start, cpu = perf(), time.process_time()
    await asyncio.gather(*(worker(t, c) for t, c in enumerate(conns)))
    timing.wall, timing.cpu = perf() - start, time.process_time() - cpu
    return timing


Op = Callable[[Conn, Values], Awaitable[Any]]


async def _call_turnstore(
    case: MethodCase, repo: PostgresTurnRepository, user: UUID, conn: Conn, v: Values
) -> object:
    return await case.call(repo, conn, v, user)


def _in_transaction(op: Op) -> Op:
    async def wrapped(conn: Conn, values: Values) -> Any:
        async with conn.transaction():
            return await op(conn, values)

    return wrapped


async def record(
    case: MethodCase, capture: Conn, repo: PostgresTurnRepository, v: Values
) -> Recording:
    """The statements ``case`` sends, with ``v``'s ids as sentinels."""
    with recording() as log:
        if case.in_transaction:
            async with capture.transaction():
                await case.call(repo, capture, v, v["tenant"])
        else:
            await case.call(repo, capture, v, v["tenant"])
    return Recording(tuple(log), dict(v))


async def bench_methods(
    store: PostgresStore, capture: Conn, fixtures: Fixtures, settings: Settings
) -> dict[str, Any]:
    repo = store.turns
    user = fixtures.user
    running = await fixtures.running(CYCLE)
    orphan_pool = await fixtures.running(150, stale=True)
    results: dict[str, Any] = {}
    per_round = max(POOL_SIZE, settings.method_ops // settings.rounds)
    for case in METHODS:
        rec_values = await _inputs(case, fixtures, running, orphan_pool, 1)
        rec = await record(case, capture, repo, rec_values[0])

        ops: dict[str, Op] = {
            "turnstore": functools.partial(_call_turnstore, case, repo, user),
            "psycopg": rec.replay,
        }
        if case.in_transaction:
            ops = {k: _in_transaction(f) for k, f in ops.items()}
        row: dict[str, Any] = {"statements": len(rec.statements), "queries": rec.queries}
        for width in (1, POOL_SIZE):
            totals = {name: Timing() for name in ops}
            async with held(store.pool, width) as conns:
                for op in ops.values():
                    await timed(
                        conns, await _inputs(case, fixtures, running, orphan_pool, 6 * width), op
                    )
                for rnd in range(settings.rounds):
                    order = list(ops) if rnd % 2 == 0 else list(reversed(ops))
                    for name in order:
                        inputs = await _inputs(case, fixtures, running, orphan_pool, per_round)
                        totals[name].add(await timed(conns, inputs, ops[name]))
            summary = {name: t.summary() for name, t in totals.items()}
            row[f"c{width}"] = summary | {
                "ratio_median": summary["turnstore"]["median_us"] / summary["psycopg"]["median_us"],
                "ratio_cpu": summary["turnstore"]["client_cpu_us"]
                / summary["psycopg"]["client_cpu_us"],
                "ratio_throughput": summary["psycopg"]["ops_per_s"]
                / summary["turnstore"]["ops_per_s"],
            }
        results[case.name] = row
        print(
            f"  {case.name:30} 1 conn x{row['c1']['ratio_median']:.3f} (median),"
            f" x{row['c1']['ratio_cpu']:.3f} (client CPU);"
            f"  8 tasks x{row[f'c{POOL_SIZE}']['ratio_throughput']:.3f} (1/throughput)",
            flush=True,
        )
    return results


async def _inputs(
    case: MethodCase,
    fixtures: Fixtures,
    running: list[Values],
    orphans: list[Values],
    n: int,
) -> list[Values]:
    if case.rows == "fresh":
        return fixtures.fresh(n)
    if case.rows == "consume":
        return await fixtures.running(n)
    if case.rows == "stale":
        return await fixtures.running(n, stale=True)
    pool = running if case.rows == "running" else orphans
    return [pool[i % len(pool)] for i in range(n)]


@asynccontextmanager
async def held(pool: psycopg_pool.AsyncConnectionPool[Any], n: int) -> AsyncIterator[list[Conn]]:
    """``n`` connections taken from ``pool`` for the duration of a block."""
    conns = [await pool.getconn() for _ in range(n)]
    try:
        yield conns
    finally:
        for conn in conns:
            await pool.putconn(conn)


# --------------------------------------------------------------------------- typical turn


def _stepping_clock() -> Callable[[], float]:
    """A monotonic clock that jumps an hour per reading: every keep-alive touch is due."""
    counter = itertools.count(step=3600)
    return lambda: float(next(counter))


async def typical_turn(lifecycle: TurnLifecycle[Any], v: Values, user: UUID) -> None:
    """``begin_turn``, 20 keep-alive writes through ``KeepAlive``, ``complete_turn``."""
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
    if not outcome.started or turn is None:
        raise RuntimeError(f"a typical turn did not start: {outcome}")
    keep_alive = lifecycle.keep_alive(
        scope,
        turn.id,
        settings=KeepAliveSettings(heartbeat=False, batched=False),
        clock=_stepping_clock(),
    )
    async with keep_alive:
        for _ in range(KEEP_ALIVES):
            await keep_alive.touch()
    done = await lifecycle.complete_turn(scope, turn, v["message"])
    if not done.won:
        raise RuntimeError(f"a typical turn did not complete: {done}")


async def run_for(
    seconds: float,
    tasks: int,
    make_values: Callable[[], Values],
    op: Callable[[Values], Awaitable[Any]],
) -> Timing:
    """Run ``op`` in ``tasks`` concurrent loops for ``seconds``."""
    timing = Timing()
    perf = time.perf_counter
    deadline = perf() + seconds

    async def worker() -> None:
        while perf() < deadline:
            v = make_values()
            start = perf()
            await op(v)
            timing.latencies.append(perf() - start)
            timing.ops += 1

    start, cpu = perf(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    timing.wall, timing.cpu = perf() - start, time.process_time() - cpu
    return timing


async def bench_typical_turn(
    store: PostgresStore,
    dsn: str,
    capture: Conn,
    fixtures: Fixtures,
    settings: Settings,
    pgbench: str | None,
) -> dict[str, Any]:
    user = fixtures.user
    lifecycle = TurnLifecycle(store)
    turn_recording = await record_typical_turn(dsn, fixtures)
    naive = await naive_start(capture, store.turns, turn_recording)
    statements = len(turn_recording.statements)
    print(f"  a typical turn sends {statements} statements", flush=True)

    async def turnstore_op(v: Values) -> None:
        await typical_turn(lifecycle, v, user)

    async def psycopg_op(v: Values) -> None:
        await replay_per_call(store.pool, turn_recording, v)

    def values() -> Values:
        return fixtures.fresh(1)[0]

    results: dict[str, Any] = {"statements": statements, "queries": turn_recording.queries}
    script = _pgbench_script(turn_recording, dsn)
    results["pgbench_script"] = script
    for tasks in (1, POOL_SIZE):
        ops = {"turnstore": turnstore_op, "psycopg": psycopg_op}
        totals = {name: Timing() for name in ops}
        for op in ops.values():
            await run_for(min(1.0, settings.turn_seconds / 4), tasks, values, op)
        for rnd in range(settings.rounds):
            order = list(ops) if rnd % 2 == 0 else list(reversed(ops))
            for name in order:
                totals[name].add(
                    await run_for(settings.turn_seconds / settings.rounds, tasks, values, ops[name])
                )
        row: dict[str, Any] = {name: t.summary() for name, t in totals.items()}
        if pgbench is not None:
            row["pgbench"] = await asyncio.to_thread(
                run_pgbench, pgbench, dsn, script, tasks, settings.turn_seconds
            )
        row["ratio_vs_psycopg"] = row["turnstore"]["ops_per_s"] / row["psycopg"]["ops_per_s"]
        row["ratio_cpu_vs_psycopg"] = (
            row["turnstore"]["client_cpu_us"] / row["psycopg"]["client_cpu_us"]
        )
        if "pgbench" in row:
            row["ratio_vs_pgbench"] = row["turnstore"]["ops_per_s"] / row["pgbench"]["ops_per_s"]
            row["psycopg_vs_pgbench"] = row["psycopg"]["ops_per_s"] / row["pgbench"]["ops_per_s"]
        if pgbench is not None:
            # The steps of *Starting a turn* one statement each (look up the key, look for a running
            # turn, insert), the rest unchanged: what the single-statement start saves.
            row["pgbench_naive_start"] = await asyncio.to_thread(
                run_pgbench, pgbench, dsn, _pgbench_script(naive, dsn), tasks, settings.turn_seconds
            )
            row["ratio_vs_pgbench_naive_start"] = (
                row["turnstore"]["ops_per_s"] / row["pgbench_naive_start"]["ops_per_s"]
            )
        results[f"c{tasks}"] = row
        pgb = row.get("pgbench", {}).get("ops_per_s", float("nan"))
        print(
            f"  {tasks} task(s): turnstore {row['turnstore']['ops_per_s']:.0f} turns/s, "
            f"psycopg {row['psycopg']['ops_per_s']:.0f}, pgbench {pgb:.0f}",
            flush=True,
        )
    return results


async def naive_start(capture: Conn, repo: PostgresTurnRepository, turn: Recording) -> Recording:
    """The typical turn preceded by the two lookups of *Starting a turn*, as separate statements:
    the start a data layer without the single-statement insert would send."""
    by_name = {case.name: case for case in METHODS}
    values = dict(turn.sentinels)
    lookups: list[Statement] = []
    for name in ("find_by_chat_and_request_id", "find_running_by_chat_id"):
        lookups.extend((await record(by_name[name], capture, repo, values)).statements)
    return Recording((*lookups, *turn.statements), turn.sentinels)


async def replay_per_call(
    pool: psycopg_pool.AsyncConnectionPool[Any], rec: Recording, v: Values
) -> None:
    """The recorded statements with one pooled connection each, as the lifecycle takes one
    connection per call (``getconn``/``putconn``: the leanest way through the pool)."""
    for st, params in zip(rec.statements, rec.params_for(v), strict=True):
        conn = await pool.getconn()
        try:
            cur = await conn.execute(st.query, params, prepare=st.prepare, binary=st.binary)
            if st.returns_rows:
                await cur.fetchall()
        finally:
            await pool.putconn(conn)


async def record_typical_turn(dsn: str, fixtures: Fixtures) -> Recording:
    """The statements of one typical turn, recorded through a store of recording cursors."""
    pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=1,
        kwargs={"autocommit": True, "cursor_factory": RecordingCursor},
        open=False,
    )
    await pool.open(wait=True)
    try:
        capture_store = PostgresStore(pool, schema=SCHEMA)
        v = fixtures.fresh(1)[0]
        with recording() as log:
            await typical_turn(TurnLifecycle(capture_store), v, fixtures.user)
        return Recording(tuple(log), dict(v))
    finally:
        await pool.close()


def _pgbench_script(rec: Recording, dsn: str) -> str:
    varying = rec.without("tenant")
    with psycopg.connect(dsn) as conn:
        commands = varying.pgbench_commands(conn)
    lines = [f"\\set {name} random(1, 9223372036854775806)" for name in varying.sentinels]
    return "\n".join(lines + commands) + "\n"


_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)


def run_pgbench(
    binary: str, dsn: str, script: str, clients: int, seconds: float
) -> dict[str, float]:
    """Run ``script`` with ``clients`` clients; per-transaction latencies from its log."""
    with tempfile.TemporaryDirectory(prefix="turnstore-pgbench-") as tmp:
        path = Path(tmp) / "typical_turn.sql"
        path.write_text(script, encoding="utf-8")
        cmd = [
            binary,
            "-n",
            "-M",
            "prepared",
            "-f",
            str(path),
            "-c",
            str(clients),
            "-j",
            str(min(2, clients)),
            "-T",
            str(max(1, round(seconds))),
            "-l",
            "--log-prefix",
            str(Path(tmp) / "log"),
            dsn,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=tmp)
        if out.returncode != 0:
            raise RuntimeError(f"pgbench failed: {out.stderr}\n{out.stdout}")
        match = _TPS.search(out.stdout)
        if match is None:
            raise RuntimeError(f"pgbench printed no tps:\n{out.stdout}")
        latencies: list[float] = []
        for log in Path(tmp).glob("log*"):
            for line in log.read_text().splitlines():
                latencies.append(int(line.split()[2]) / 1e6)
    tps = float(match.group(1))
    stats = summarize(latencies, 1.0, 0)
    stats["ops_per_s"] = tps
    return stats


# --------------------------------------------------------------------------- HOT share


async def _table_updates(conn: Conn) -> tuple[int, int]:
    cur = await conn.execute(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
        " WHERE schemaname = %s AND relname = 'chat_turns'",
        (SCHEMA,),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def updates_delta(
    observer: Conn, writers: Sequence[Conn], before: tuple[int, int], expected: int
) -> tuple[int, int]:
    """(updates, HOT updates) since ``before``, once the writers' statistics have landed.

    Backends flush table statistics asynchronously; ``pg_stat_force_next_flush()`` makes
    each writer flush at the end of its next transaction.
    """
    for conn in writers:
        await conn.execute("SELECT pg_stat_force_next_flush()")
        await conn.execute("SELECT 1")
    deadline = time.monotonic() + 15
    while True:
        await observer.execute("SELECT pg_stat_clear_snapshot()")
        upd, hot = await _table_updates(observer)
        delta = (upd - before[0], hot - before[1])
        if delta[0] >= expected or time.monotonic() > deadline:
            return delta
        await asyncio.sleep(0.2)


async def bench_hot(
    store: PostgresStore, fixtures: Fixtures, observer: Conn, n: int, *, shuffle: bool = True
) -> dict[str, Any]:
    """Keep-alive writes on ``n`` concurrent streams, 20 each, round robin.

    Each round touches every stream once, in a random order: concurrent writers land on
    random pages, as streams that started at different times do. ``shuffle=False`` keeps
    insertion order instead, so the eight writers hit adjacent rows (the same page): the
    worst case for pruning, which needs the page to itself.
    """
    turns = await fixtures.running(n)
    repo = store.turns
    rng = random.Random(5)
    inputs = [
        v for _ in range(KEEP_ALIVES) for v in (rng.sample(turns, len(turns)) if shuffle else turns)
    ]
    async with held(store.pool, POOL_SIZE) as conns:
        await updates_delta(observer, [*conns, observer], (0, 0), 0)
        before = await _table_updates(observer)

        async def touch(conn: Conn, v: Values) -> None:
            assert await repo.update_progress_at(conn, _scope(v), v["turn"]) == 1

        await timed(conns, inputs, touch)
        upd, hot = await updates_delta(observer, conns, before, len(inputs))
    return {
        "keep_alive_updates": len(inputs),
        "n_tup_upd_delta": upd,
        "n_tup_hot_upd_delta": hot,
        "hot_share": hot / upd if upd else 0.0,
        "streams": n,
        "shuffled": shuffle,
    }


# --------------------------------------------------------------------------- the fake


async def bench_fake(
    settings: Settings, *, profile: cProfile.Profile | None = None
) -> dict[str, Any]:
    """Typical turns per second on ``InMemoryStore`` holding ``fake_turns`` turns;
    ``profile``, when given, is enabled around the measured turns only."""
    store = InMemoryStore()
    repo = store.turns
    tenant, user = uuid.uuid4(), uuid.uuid4()
    scope = AccessScope.for_tenant(tenant)
    started = time.perf_counter()
    async with store.connection() as conn:
        for _ in range(settings.fake_turns):
            turn = await repo.create_turn(
                conn,
                scope,
                CreateTurnParams(
                    id=uuid.uuid4(),
                    tenant_id=tenant,
                    chat_id=uuid.uuid4(),
                    request_id=uuid.uuid4(),
                    requester_type=RequesterType.USER,
                    requester_user_id=user,
                ),
            )
            await repo.cas_update_completed(
                conn, scope, CasCompleteParams(turn_id=turn.id, assistant_message_id=turn.id)
            )
    load_s = time.perf_counter() - started
    # Start the measurement on a settled heap: the first full collection after loading
    # walks every stored object (about 2 s at a million turns) and comes once per 25%
    # growth of the heap, so inside a window of a few thousand turns it would be charged
    # whole to them instead of spread over the hundreds of thousands it serves.
    gc.collect()
    lifecycle = TurnLifecycle(store)
    values = [
        {
            "tenant": tenant,
            "turn": uuid.uuid4(),
            "chat": uuid.uuid4(),
            "request": uuid.uuid4(),
            "message": uuid.uuid4(),
        }
        for _ in range(settings.fake_measured)
    ]
    latencies: list[float] = []
    perf = time.perf_counter
    if profile is not None:
        profile.enable()
    cpu = time.process_time()
    start = perf()
    for v in values:
        t0 = perf()
        await typical_turn(lifecycle, v, user)
        latencies.append(perf() - t0)
    wall = perf() - start
    cpu = time.process_time() - cpu
    if profile is not None:
        profile.disable()
    return {
        "stored_turns": settings.fake_turns,
        "load_seconds": load_s,
        # Process CPU per turn: steadier than wall time on a shared machine.
        "cpu_us_per_turn": cpu / len(values) * 1e6,
        "typical_turn": summarize(latencies, wall, len(values)),
    }


# --------------------------------------------------------------------------- main


async def run(admin_dsn: str, dsn: str, settings: Settings, *, fake: bool) -> dict[str, Any]:
    store = await PostgresStore.open(dsn, schema=SCHEMA, min_size=POOL_SIZE, max_size=POOL_SIZE)
    try:
        await store.migrate()
        shape = DatasetShape(
            turns=settings.dataset_turns,
            chats=settings.dataset_turns // 10,
            running=max(200, settings.dataset_turns // 100),
            stale=150,
        )
        print(f"loading {shape.turns:,} turns ...", flush=True)
        data = await asyncio.to_thread(load, dsn, SCHEMA, shape)
        async with await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, cursor_factory=RecordingCursor
        ) as aux:
            fixtures = Fixtures(aux, data.tenant_ids[0], uuid.uuid4())
            print("repository methods (turnstore / psycopg):", flush=True)
            methods = await bench_methods(store, aux, fixtures, settings)
            print("typical turn:", flush=True)
            pgbench = pgbench_binary(admin_dsn)
            turn = await bench_typical_turn(store, dsn, aux, fixtures, settings, pgbench)
            print("HOT share of keep-alive updates:", flush=True)
            hot = []
            for streams in settings.hot_streams:
                hot.append(await bench_hot(store, fixtures, aux, streams))
                print(
                    f"  {streams} streams: {hot[-1]['hot_share']:.3f} of "
                    f"{hot[-1]['n_tup_upd_delta']} updates",
                    flush=True,
                )
    finally:
        await store.close()
    out: dict[str, Any] = {
        "methods": methods,
        "typical_turn": turn,
        "hot": hot,
        "pgbench": pgbench,
    }
    if fake:
        print(f"in-memory fake, {settings.fake_turns:,} turns stored:", flush=True)
        out["fake"] = await bench_fake(settings)
        print(f"  {out['fake']['typical_turn']['ops_per_s']:.0f} typical turns/s", flush=True)
    return out


def method_table(methods: dict[str, Any]) -> list[str]:
    """The per-method comparison as Markdown rows (ratios: turnstore cost / psycopg cost)."""
    lines = [
        "| method | stmts | 1 conn median us (ts / pg) | p99 us (ts / pg) | median ratio"
        " | client CPU ratio | 8 tasks ops/s (ts / pg) | 8 tasks cost ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in methods.items():
        c1, c8 = row["c1"], row[f"c{POOL_SIZE}"]
        ts1, pg1 = c1["turnstore"], c1["psycopg"]
        lines.append(
            f"| {name} | {row['statements']} | {ts1['median_us']:.0f} / {pg1['median_us']:.0f}"
            f" | {ts1['p99_us']:.0f} / {pg1['p99_us']:.0f} | {c1['ratio_median']:.3f}"
            f" | {c1['ratio_cpu']:.3f}"
            f" | {c8['turnstore']['ops_per_s']:.0f} / {c8['psycopg']['ops_per_s']:.0f}"
            f" | {c8['ratio_throughput']:.3f} |"
        )
    return lines


def turn_table(turn: dict[str, Any]) -> list[str]:
    """The typical-turn comparison as Markdown rows."""
    lines = [
        "| tasks | client | turns/s | median ms | p99 ms | client CPU us/turn |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for tasks in (1, POOL_SIZE):
        row = turn[f"c{tasks}"]
        for impl in ("turnstore", "psycopg", "pgbench", "pgbench_naive_start"):
            if impl in row:
                s = row[impl]
                cpu = f"{s['client_cpu_us']:.0f}" if "client_cpu_us" in s else "-"
                lines.append(
                    f"| {tasks} | {impl} | {s['ops_per_s']:.1f} | {s['median_us'] / 1e3:.2f}"
                    f" | {s['p99_us'] / 1e3:.2f} | {cpu} |"
                )
    lines.append("")
    lines.append(
        "| tasks | turnstore / psycopg | turnstore / pgbench | psycopg / pgbench"
        " | turnstore / pgbench (naive start) |"
    )
    lines.append("|---:|---:|---:|---:|---:|")
    for tasks in (1, POOL_SIZE):
        row = turn[f"c{tasks}"]
        lines.append(
            f"| {tasks} | {row['ratio_vs_psycopg']:.3f}"
            f" | {row.get('ratio_vs_pgbench', float('nan')):.3f}"
            f" | {row.get('psycopg_vs_pgbench', float('nan')):.3f}"
            f" | {row.get('ratio_vs_pgbench_naive_start', float('nan')):.3f} |"
        )
    return lines


def print_tables(results: dict[str, Any]) -> None:
    print()
    print("repository methods, turnstore (ts) vs the same SQL through plain psycopg (pg):")
    print("\n".join(method_table(results["methods"])))
    turn = results["typical_turn"]
    print()
    print(f"typical turn ({turn['statements']} statements), throughput ratios:")
    print("\n".join(turn_table(turn)))
    for hot in results["hot"]:
        print(f"HOT share of keep-alive updates, {hot['streams']} streams: {hot['hot_share']:.3f}")
    if "fake" in results:
        fake = results["fake"]
        print(
            f"in-memory fake with {fake['stored_turns']:,} turns: "
            f"{fake['typical_turn']['ops_per_s']:.0f} typical turns/s"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--no-fake", action="store_true", help="skip the in-memory fake")
    add_loop_argument(parser)
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    with benchmark_database(args, "turnstore_bench") as (admin_dsn, dsn):
        machine = machine_info(admin_dsn)
        results = run_async(run(admin_dsn, dsn, settings, fake=not args.no_fake), args.loop)
    print_tables(results)
    path = write_results(
        "bench" if args.loop == "asyncio" else f"bench-{args.loop}",
        {"machine": machine, "settings": vars(settings), "quick": args.quick, "loop": args.loop}
        | results,
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
