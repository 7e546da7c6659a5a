"""The sync API (``turnstore.sync``) next to hand-written sync psycopg running the same SQL.

For each measured repository method: the median and p99 latency of one call on one
autocommit ``psycopg.Connection``, and the client CPU per call, for turnstore's generated
sync ``PostgresTurnRepository`` and for a baseline that replays the very statements
turnstore sent (recorded from a real call inside a transaction rolled back, so no copy of
the SQL can drift) through ``Connection.execute``, rows fetched as tuples.

    python -m benchmarks.sync_bench [--dsn postgresql://...] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any
from uuid import UUID

import psycopg

from benchmarks._support import (
    add_server_arguments,
    benchmark_database,
    machine_info,
    percentile,
    write_results,
)
from turnstore import AccessScope, CasCompleteParams, CreateTurnParams, RequesterType
from turnstore.model import Turn
from turnstore.sync.postgres import PostgresTurnRepository, migrate

__all__ = ["main"]

Conn = psycopg.Connection[Any]
Statement = tuple[Any, Any]
_recorded: list[Statement] | None = None


class _RecordingCursor(psycopg.Cursor[Any]):
    """Notes each statement (query, params) while a recording is on."""

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        if _recorded is not None:
            _recorded.append((query, params))
        return super().execute(query, params, **kwargs)


def _params(tenant: UUID) -> CreateTurnParams:
    return CreateTurnParams(
        id=uuid.uuid4(),
        tenant_id=tenant,
        chat_id=uuid.uuid4(),
        request_id=uuid.uuid4(),
        requester_type=RequesterType.USER,
        requester_user_id=uuid.uuid4(),
    )


# Each method: how to call it on one prepared input (a running turn, or fresh params).
Call = Callable[[PostgresTurnRepository, Conn, AccessScope, Any], object]

METHODS: dict[str, tuple[bool, Call]] = {
    # name: (needs a running turn as input, call)
    "create_turn": (False, lambda r, c, s, p: r.create_turn(c, s, p)),
    "find_by_chat_and_request_id": (
        True,
        lambda r, c, s, t: r.find_by_chat_and_request_id(c, s, t.chat_id, t.request_id),
    ),
    "find_running_by_chat_id": (
        True,
        lambda r, c, s, t: r.find_running_by_chat_id(c, s, t.chat_id),
    ),
    "find_latest_turn": (True, lambda r, c, s, t: r.find_latest_turn(c, s, t.chat_id)),
    "update_progress_at": (True, lambda r, c, s, t: r.update_progress_at(c, s, t.id)),
    "cas_update_completed": (
        True,
        lambda r, c, s, t: r.cas_update_completed(
            c, s, CasCompleteParams(turn_id=t.id, assistant_message_id=uuid.uuid4())
        ),
    ),
}


def _replay(conn: Conn, statements: list[Statement]) -> None:
    for query, params in statements:
        cur = conn.execute(query, params)
        if cur.description is not None:
            cur.fetchall()


def _summary(latencies: list[float], cpu: float) -> dict[str, float]:
    return {
        "median_us": statistics.median(latencies) * 1e6,
        "p99_us": percentile(latencies, 0.99) * 1e6,
        "client_cpu_us": cpu / len(latencies) * 1e6,
    }


def bench_method(
    conn: Conn, repo: PostgresTurnRepository, name: str, n: int
) -> dict[str, dict[str, float]]:
    global _recorded
    needs_turn, call = METHODS[name]
    tenant = uuid.uuid4()
    scope = AccessScope.for_tenant(tenant)

    def inputs() -> list[Any]:
        if not needs_turn:
            return [_params(tenant) for _ in range(n)]
        return [repo.create_turn(conn, scope, _params(tenant)) for _ in range(n)]

    # The baseline's statements: turnstore's own, for inputs of their own, recorded inside
    # a transaction that is rolled back, so the replay finds the same state.
    baseline_inputs = inputs()
    scripts: list[list[Statement]] = []
    for item in baseline_inputs:
        _recorded = []
        with conn.transaction(force_rollback=True):
            call(repo, conn, scope, item)
        scripts.append(_recorded)
        _recorded = None
    ours = inputs()
    runs: dict[str, Callable[[int], object]] = {
        "turnstore": lambda i: call(repo, conn, scope, ours[i]),
        "psycopg": lambda i: _replay(conn, scripts[i]),
    }
    latencies: dict[str, list[float]] = {label: [] for label in runs}
    cpu = dict.fromkeys(runs, 0.0)
    # Interleaved call by call, so that a noisy neighbour slows both sides alike.
    for i in range(n):
        for label, run in runs.items():
            cpu_start, start = time.process_time(), time.perf_counter()
            run(i)
            latencies[label].append(time.perf_counter() - start)
            cpu[label] += time.process_time() - cpu_start
    return {label: _summary(latencies[label], cpu[label]) for label in runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_server_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="fewer calls per method")
    args = parser.parse_args(argv)
    n = 200 if args.quick else 1000
    with benchmark_database(args, "turnstore_sync_bench") as (admin_dsn, dsn):
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrate(conn)
        with psycopg.connect(dsn, autocommit=True, cursor_factory=_RecordingCursor) as conn:
            repo = PostgresTurnRepository()
            warm = AccessScope.allow_all()
            for _ in range(50):  # prepared statements and caches warm on both sides
                turn: Turn = repo.create_turn(conn, warm, _params(uuid.uuid4()))
                repo.update_progress_at(conn, warm, turn.id)
            rows = {}
            print(
                "| method | 1 conn median us (ts / pg) | p99 us (ts / pg) | median ratio "
                "| client CPU ratio |"
            )
            print("|---|---:|---:|---:|---:|")
            for name in METHODS:
                r = bench_method(conn, repo, name, n)
                ts, pg = r["turnstore"], r["psycopg"]
                rows[name] = r
                print(
                    f"| {name} | {ts['median_us']:.0f} / {pg['median_us']:.0f} "
                    f"| {ts['p99_us']:.0f} / {pg['p99_us']:.0f} "
                    f"| {ts['median_us'] / pg['median_us']:.3f} "
                    f"| {ts['client_cpu_us'] / pg['client_cpu_us']:.3f} |"
                )
        path = write_results(
            "sync_bench", {"machine": machine_info(admin_dsn), "calls": n, "methods": rows}
        )
        print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
