"""Cancel latency between two processes: from the cancel to the stream noticing it.

One OS process streams ``--turns`` turns, ``--concurrency`` at a time, each in a chat of
its own, each with a keep-alive whose stream loop awaits ``keep_alive.wait_finalized()``
while a token task runs beside it (no keep-alive write happens: the heartbeat interval is
the default 30 s). Another OS process cancels each turn at a random moment
(``--min-delay`` to ``--max-delay`` seconds after it started; turns start after a random
pause of up to ``--jitter`` seconds, so cancels fall anywhere between two polls) through
a store of its own.
The latency of one turn is the stream's notice time minus the time the canceller sent
the cancel (``CLOCK_MONOTONIC``, shared by processes on one Linux machine): an upper bound
of commit-to-notice, since it includes the CAS's own round trip.

It runs twice: with notifications (``LISTEN``), and with the polling fallback
(``notifications=False``, every ``--poll-secs``), and prints p50/p95/p99 of each.

    python -m benchmarks.cancel_latency [--dsn ...] [--turns 300] [--concurrency 20]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import queue
import random
import sys
import time
import uuid
from typing import Any

from benchmarks._support import (
    add_server_arguments,
    benchmark_database,
    machine_info,
    percentile,
    write_results,
)
from turnstore.lifecycle import TurnLifecycle
from turnstore.model import CasTerminalParams, CreateTurnParams, RequesterType, TurnState
from turnstore.postgres import PostgresStore
from turnstore.scope import AccessScope

_DONE = "done"


# --------------------------------------------------------------------------- streamer


async def _stream(
    dsn: str,
    notifications: bool,
    poll_secs: float,
    turns: int,
    concurrency: int,
    jitter: float,
    ids: Any,
    notices: Any,
) -> None:
    async with await PostgresStore.open(
        dsn, notifications=notifications, cancel_poll_secs=poll_secs, max_size=concurrency + 2
    ) as store:
        lifecycle = TurnLifecycle(store)
        slots = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with slots:
                # Turns start at random moments, not right after the previous one ends (which
                # the polling fallback would have just noticed): cancels fall anywhere
                # between two polls, as real ones do.
                await asyncio.sleep(random.uniform(0, jitter))
                tenant = uuid.uuid4()
                scope = AccessScope.for_tenant(tenant)
                outcome = await lifecycle.begin_turn(
                    scope,
                    CreateTurnParams(
                        id=uuid.uuid4(),
                        tenant_id=tenant,
                        chat_id=uuid.uuid4(),
                        request_id=uuid.uuid4(),
                        requester_type=RequesterType.USER,
                        requester_user_id=uuid.uuid4(),
                    ),
                )
                assert outcome.turn is not None
                turn_id = outcome.turn.id
                async with lifecycle.keep_alive(scope, turn_id) as ka:
                    assert not ka.is_over  # watch before the canceller learns the id
                    ids.put((str(turn_id), time.monotonic()))

                    produced = [0]

                    async def tokens() -> None:
                        for _ in range(1_000_000):
                            await asyncio.sleep(0.02)  # a token every 20 ms
                            produced[0] += 1

                    generating = asyncio.create_task(tokens())
                    try:
                        await ka.wait_finalized()
                        noticed = time.monotonic()
                    finally:
                        generating.cancel()
                    notices.put((str(turn_id), noticed, ka.writes))

        await asyncio.gather(*(one() for _ in range(turns)))
    ids.put(_DONE)


def streamer(
    dsn: str,
    notifications: bool,
    poll_secs: float,
    turns: int,
    concurrency: int,
    jitter: float,
    ids: Any,
    notices: Any,
) -> None:
    asyncio.run(_stream(dsn, notifications, poll_secs, turns, concurrency, jitter, ids, notices))


# --------------------------------------------------------------------------- canceller


async def _cancel(
    dsn: str, min_delay: float, max_delay: float, seed: int, ids: Any, sent: Any
) -> None:
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    everyone = AccessScope.allow_all()
    async with await PostgresStore.open(dsn, max_size=40) as store:
        pending: set[asyncio.Task[None]] = set()

        async def cancel(turn_id: uuid.UUID, started: float, delay: float) -> None:
            await asyncio.sleep(max(0.0, started + delay - time.monotonic()))
            params = CasTerminalParams(turn_id=turn_id, state=TurnState.CANCELLED)
            before = time.monotonic()
            async with store.connection() as conn:
                won = await store.turns.cas_update_state(conn, everyone, params)
            after = time.monotonic()
            assert won == 1
            sent.put((str(turn_id), before, after))

        while True:
            item = await loop.run_in_executor(None, ids.get)
            if item == _DONE:
                break
            turn_id, started = item
            delay = rng.uniform(min_delay, max_delay)
            task = asyncio.create_task(cancel(uuid.UUID(turn_id), started, delay))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)


def canceller(dsn: str, min_delay: float, max_delay: float, seed: int, ids: Any, sent: Any) -> None:
    asyncio.run(_cancel(dsn, min_delay, max_delay, seed, ids, sent))


# --------------------------------------------------------------------------- driver


def _drain(q: Any, count: int, timeout: float) -> list[Any]:
    items = []
    deadline = time.monotonic() + timeout
    while len(items) < count:
        try:
            items.append(q.get(timeout=max(0.1, deadline - time.monotonic())))
        except queue.Empty:
            break
    return items


def measure(dsn: str, args: argparse.Namespace, *, notifications: bool) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    ids, notices, sent = ctx.Queue(), ctx.Queue(), ctx.Queue()
    stream_proc = ctx.Process(
        target=streamer,
        args=(
            dsn,
            notifications,
            args.poll_secs,
            args.turns,
            args.concurrency,
            args.jitter,
            ids,
            notices,
        ),
    )
    cancel_proc = ctx.Process(
        target=canceller, args=(dsn, args.min_delay, args.max_delay, args.seed, ids, sent)
    )
    stream_proc.start()
    cancel_proc.start()
    timeout = 120 + args.turns * (args.max_delay + args.poll_secs)
    noticed = {i: (t, writes) for i, t, writes in _drain(notices, args.turns, timeout)}
    cancels = {i: (before, after) for i, before, after in _drain(sent, args.turns, timeout)}
    stream_proc.join(30)
    cancel_proc.join(30)
    if stream_proc.exitcode != 0 or cancel_proc.exitcode != 0:
        raise SystemExit(f"a process failed: {stream_proc.exitcode}, {cancel_proc.exitcode}")
    latencies = [noticed[i][0] - cancels[i][0] for i in cancels if i in noticed]
    if len(latencies) != args.turns:
        raise SystemExit(f"only {len(latencies)} of {args.turns} turns measured")
    return {
        "mode": "listen" if notifications else f"poll every {args.poll_secs} s",
        "turns": len(latencies),
        "keep_alive_writes": sum(writes for _, writes in noticed.values()),
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p95_ms": percentile(latencies, 0.95) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "max_ms": max(latencies) * 1e3,
        "cas_round_trip_p50_ms": percentile([a - b for b, a in cancels.values()], 0.5) * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_arguments(parser)
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--min-delay", type=float, default=0.05)
    parser.add_argument("--max-delay", type=float, default=0.5)
    parser.add_argument("--poll-secs", type=float, default=1.0)
    parser.add_argument("--jitter", type=float, default=1.0, help="random pause before a turn")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    with benchmark_database(args, "turnstore_cancel") as (admin_dsn, dsn):

        async def prepare() -> None:
            async with await PostgresStore.open(dsn) as store:
                await store.migrate()

        asyncio.run(prepare())
        results = [measure(dsn, args, notifications=mode) for mode in (True, False)]
        info = machine_info(admin_dsn)
    print(f"{'mode':<22} {'turns':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for r in results:
        print(
            f"{r['mode']:<22} {r['turns']:>5} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f}"
            f" {r['p99_ms']:>8.1f} {r['max_ms']:>8.1f}"
        )
    path = write_results(
        "cancel_latency", {"args": vars(args), "machine": info, "results": results}
    )
    print(f"results: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
