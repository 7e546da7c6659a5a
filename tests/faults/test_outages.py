"""The server goes away while 50 turns stream (a restart, or a stop of 5 s then a start):
every turn settles (completed, or failed by the watchdog), none is lost, callers see typed
errors only, and the watchdog leads again."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from faults.cluster import PgCluster
from faults.conftest import FaultDatabase
from faults.invariants import assert_clean, assert_typed, count_turns
from faults.workload import TurnChat
from turnstore.errors import StoreUnavailableError, TurnStoreError
from turnstore.lifecycle import KeepAliveSettings, TurnLifecycle
from turnstore.postgres import LeaseElection, PostgresStore
from turnstore.settings import WatchdogSettings
from turnstore.testing.backends import PostgresHarness
from turnstore.watchdog import OrphanWatchdog

pytestmark = pytest.mark.faults

STREAMS = 50
STREAM_SECS = 4.0
#: How long a call keeps retrying on ``StoreUnavailableError`` across the outage.
RETRY_SECS = 40.0
SETTLE_SECS = 60.0
KEEP_ALIVE = KeepAliveSettings(interval_secs=0.2, orphan_timeout_secs=60)


async def retrying(call: Any, errors: list[BaseException]) -> Any:
    """``call()`` until it succeeds, retrying typed unavailability for ``RETRY_SECS``."""
    deadline = time.monotonic() + RETRY_SECS
    while True:
        try:
            return await call()
        except StoreUnavailableError as exc:
            errors.append(exc)
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def outage(cluster: PgCluster, kind: str) -> None:
    if kind == "restart":
        await asyncio.to_thread(cluster.restart, "fast")
    else:
        await asyncio.to_thread(cluster.stop, "fast")
        await asyncio.sleep(5.0)
        await asyncio.to_thread(cluster.start)


@pytest.mark.parametrize("kind", ["restart", "stopped 5 s"])
async def test_streams_across_an_outage_all_settle(
    pg_cluster: PgCluster, fault_db: FaultDatabase, kind: str
) -> None:
    store = await PostgresStore.open(fault_db.dsn, min_size=4, max_size=12, timeout=10)
    async with store:
        lifecycle = TurnLifecycle(store)
        election = LeaseElection(
            store.connection, lease_secs=3.0, renew_interval_secs=1.0, margin_secs=0.3
        )
        watchdog = OrphanWatchdog(
            store,
            WatchdogSettings(orphan_timeout_secs=60, scan_interval_secs=0.2),
            election=election,
        )
        errors: list[BaseException] = []
        begun: dict[uuid.UUID, TurnChat] = {}

        async def stream(chat: TurnChat) -> None:
            params = chat.params()
            # The same request id on every attempt: a begin that committed before the
            # connection died is replayed, never started twice.
            outcome = await retrying(lambda: lifecycle.begin_turn(chat.scope, params), errors)
            assert outcome.turn is not None
            turn = outcome.turn
            begun[turn.id] = chat
            started = time.monotonic()
            async with lifecycle.keep_alive(chat.scope, turn.id, settings=KEEP_ALIVE) as ka:
                while time.monotonic() - started < STREAM_SECS:
                    try:
                        await ka.touch()
                    except TurnStoreError as exc:
                        errors.append(exc)
                    await asyncio.sleep(0.05)
            await retrying(lambda: lifecycle.complete_turn(chat.scope, turn, uuid.uuid4()), errors)

        async with watchdog:
            tasks = [asyncio.ensure_future(stream(TurnChat())) for _ in range(STREAMS)]
            await asyncio.sleep(1.0)
            outage_began = time.monotonic()
            await outage(pg_cluster, kind)
            back = time.monotonic()
            done, pending = await asyncio.wait(tasks, timeout=RETRY_SECS + STREAM_SECS + 20)
            for task in pending:
                task.cancel()
            assert not pending, f"{len(pending)} streams never finished"
            raised = [t.exception() for t in done if t.exception() is not None]
            errors.extend(e for e in raised if e is not None)
            assert_typed(errors)
            # A stream whose completion gave up is an orphan by now, for the watchdog.
            await retrying(lambda: PostgresHarness(store).advance_time(61), errors)
            while await count_turns(fault_db.dsn, "state = 'running'") > 0:
                assert time.monotonic() - back < SETTLE_SECS, "turns still running"
                await asyncio.sleep(0.2)
            settled = time.monotonic() - back
            while not watchdog.is_leader:
                assert time.monotonic() - back < SETTLE_SECS, "the watchdog never led again"
                await asyncio.sleep(0.1)
        total = await count_turns(fault_db.dsn)
        assert total == len(begun) == STREAMS, (total, len(begun))
        finished = await count_turns(fault_db.dsn, "state IN ('completed', 'failed')")
        assert finished == STREAMS
        await assert_clean(store, fault_db.dsn)
        print(
            f"\n{kind}: outage {back - outage_began:.1f} s, all {STREAMS} settled "
            f"{settled:.1f} s after the server was back, {len(errors)} typed errors retried"
        )
