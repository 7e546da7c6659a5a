"""The generated sync API end to end: the lifecycle on the host's own ``psycopg.Connection``
(in the host's transaction), keep-alive's heartbeat thread, and the watchdog's thread, on
both sync backends."""

from __future__ import annotations

import threading
import time
from typing import Any
from uuid import uuid4

import psycopg
import pytest

from turnstore.lifecycle import StartKind
from turnstore.model import CreateTurnParams, RequesterType, TurnState
from turnstore.rules import ORPHAN_ERROR_CODE
from turnstore.scope import AccessScope
from turnstore.settings import KeepAliveSettings, WatchdogSettings
from turnstore.sync import OrphanWatchdog, PostgresStore, TurnLifecycle
from turnstore.sync.testing.backends import BackendHarness

ALLOW = AccessScope.allow_all()


def params() -> CreateTurnParams:
    return CreateTurnParams(
        id=uuid4(),
        tenant_id=uuid4(),
        chat_id=uuid4(),
        request_id=uuid4(),
        requester_type=RequesterType.USER,
        requester_user_id=uuid4(),
    )


def test_begin_and_complete_replay(turnstore_sync_backend: BackendHarness) -> None:
    lifecycle: TurnLifecycle[Any] = TurnLifecycle(turnstore_sync_backend.store)
    p = params()
    started = lifecycle.begin_turn(ALLOW, p)
    assert started.kind is StartKind.STARTED
    assert started.turn is not None
    done = lifecycle.complete_turn(ALLOW, started.turn, uuid4())
    assert done.won
    replay = lifecycle.begin_turn(ALLOW, p)
    assert replay.kind is StartKind.REPLAY


def test_host_connection_transaction_commits_and_rolls_back(turnstore_pg_dsn: str) -> None:
    """The runner is the host's own connection: the turn's writes commit or roll back with
    the host's transaction."""
    store = PostgresStore.open(turnstore_pg_dsn, max_size=2)
    lifecycle = TurnLifecycle(store)
    with psycopg.connect(turnstore_pg_dsn) as host:
        p = params()

        def failing_request() -> None:
            with host.transaction():
                outcome = lifecycle.begin_turn(ALLOW, p, runner=host)
                assert outcome.kind is StartKind.STARTED
                raise RuntimeError("the host's request fails")

        with pytest.raises(RuntimeError):
            failing_request()
        kept = params()
        with host.transaction():
            outcome = lifecycle.begin_turn(ALLOW, kept, runner=host)
            assert outcome.turn is not None
            lifecycle.complete_turn(ALLOW, outcome.turn, uuid4(), runner=host)
    with store.connection() as conn:
        assert (
            store.turns.find_by_chat_and_request_id(
                conn, ALLOW, p.tenant_id, p.chat_id, p.request_id
            )
            is None
        )
        found = store.turns.find_by_chat_and_request_id(
            conn, ALLOW, kept.tenant_id, kept.chat_id, kept.request_id
        )
    assert found is not None
    assert found.state is TurnState.COMPLETED
    store.close()


def test_keep_alive_heartbeat_thread_writes_and_stops(
    turnstore_sync_backend: BackendHarness,
) -> None:
    lifecycle: TurnLifecycle[Any] = TurnLifecycle(turnstore_sync_backend.store)
    outcome = lifecycle.begin_turn(ALLOW, params())
    assert outcome.turn is not None
    settings = KeepAliveSettings(interval_secs=0.05)
    threads_before = threading.active_count()
    with lifecycle.keep_alive(ALLOW, outcome.turn.id, settings=settings) as keep_alive:
        # settings.batched is on, but the sync API always writes per turn.
        assert settings.batched
        assert not keep_alive.batched
        deadline = time.monotonic() + 10
        while keep_alive.writes < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert keep_alive.writes >= 3, "the heartbeat thread did not write"
        started_stop = time.monotonic()
    assert time.monotonic() - started_stop < 5, "stopping the heartbeat thread hung"
    assert threading.active_count() == threads_before
    assert keep_alive.touch() is True


def test_watchdog_thread_fails_an_orphan(turnstore_sync_backend: BackendHarness) -> None:
    store = turnstore_sync_backend.store
    lifecycle: TurnLifecycle[Any] = TurnLifecycle(store)
    outcome = lifecycle.begin_turn(ALLOW, params())
    assert outcome.turn is not None
    turnstore_sync_backend.advance_time(400)
    settings = WatchdogSettings(orphan_timeout_secs=300, scan_interval_secs=0.05)
    watchdog: OrphanWatchdog[Any] = OrphanWatchdog(store, settings)
    with watchdog:
        assert watchdog.running
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with store.connection() as conn:
                row = store.turns.find_running_by_chat_id(
                    conn, ALLOW, outcome.turn.tenant_id, outcome.turn.chat_id
                )
            if row is None:
                break
            time.sleep(0.05)
    assert not watchdog.running
    assert not watchdog.is_leader
    with store.connection() as conn:
        final = store.turns.find_by_chat_and_request_id(
            conn, ALLOW, outcome.turn.tenant_id, outcome.turn.chat_id, outcome.turn.request_id
        )
    assert final is not None
    assert final.error_code == ORPHAN_ERROR_CODE


def test_run_once_is_a_one_off_sweep(turnstore_sync_backend: BackendHarness) -> None:
    store = turnstore_sync_backend.store
    outcome = TurnLifecycle(store).begin_turn(ALLOW, params())
    assert outcome.turn is not None
    turnstore_sync_backend.advance_time(400)
    watchdog: OrphanWatchdog[Any] = OrphanWatchdog(store, WatchdogSettings(orphan_timeout_secs=300))
    report = watchdog.run_once()
    assert report.leader
    assert [t.id for t in report.finalized] == [outcome.turn.id]
    assert not watchdog.is_leader
