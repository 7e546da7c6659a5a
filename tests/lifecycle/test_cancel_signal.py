"""Instant cancel (docs/lifecycle.md, *Cancel*): a finalize made through any store or
connection reaches a keep-alive's ``finalized`` event without a keep-alive write, on both
backends; a finalize that loses or rolls back signals nothing."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from lifecycle_support import Chat
from turnstore.errors import TurnNotFoundError
from turnstore.lifecycle import StartKind, TurnLifecycle
from turnstore.model import CasTerminalParams, Turn, TurnState
from turnstore.postgres import PostgresStore
from turnstore.scope import AccessScope
from turnstore.settings import KeepAliveSettings
from turnstore.signals import FinalizeSignalSource
from turnstore.testing.backends import BackendHarness

#: No heartbeat, so every write a test sees comes from a touch (and these tests touch not).
TOUCH_ONLY = KeepAliveSettings(interval_secs=10, orphan_timeout_secs=60, heartbeat=False)
#: Promptly: far below the one-second poll and the keep-alive interval.
PROMPT_SECS = 2.0


async def started(lc: TurnLifecycle[Any], chat: Chat) -> Turn:
    outcome = await lc.begin_turn(chat.scope, chat.params())
    assert outcome.kind is StartKind.STARTED
    assert outcome.turn is not None
    return outcome.turn


async def waits_for(event: asyncio.Event, timeout: float = PROMPT_SECS) -> float:
    """Seconds until ``event`` is set; fails the test past ``timeout``."""
    start = time.monotonic()
    await asyncio.wait_for(event.wait(), timeout)
    return time.monotonic() - start


async def stays_unset(event: asyncio.Event, secs: float = 0.5) -> bool:
    await asyncio.sleep(secs)
    return not event.is_set()


def signals_of(backend: BackendHarness) -> Any:
    """The store's finalize signals (both built-in stores have them)."""
    store = backend.store
    assert isinstance(store, FinalizeSignalSource)
    return store.finalize_signals()


async def watching(backend: BackendHarness, ka: Any) -> None:
    """Wait until the store's signals are live for ``ka`` (on PostgreSQL: listening)."""
    assert not ka.is_over
    signals = signals_of(backend)
    if getattr(signals, "notifications", False):
        for _ in range(200):
            if signals.listening:
                return
            await asyncio.sleep(0.01)
        pytest.fail("the listener never listened")


async def test_cancel_elsewhere_sets_finalized_without_a_write(
    turnstore_backend: BackendHarness, request: pytest.FixtureRequest
) -> None:
    lc = TurnLifecycle(turnstore_backend.store)
    chat = Chat()
    turn = await started(lc, chat)
    async with lc.keep_alive(chat.scope, turn.id, settings=TOUCH_ONLY) as ka:
        await watching(turnstore_backend, ka)
        if turnstore_backend.name == "postgres":
            # Another store, as another instance would have: its own pool, its own session.
            dsn = request.getfixturevalue("turnstore_pg_dsn")
            schema = getattr(turnstore_backend, "schema", "turnstore")
            async with await PostgresStore.open(dsn, schema=schema) as other:
                assert (await TurnLifecycle(other).cancel_turn(chat.scope, turn)).won
        else:
            async with turnstore_backend.store.connection() as conn:
                params = CasTerminalParams(turn_id=turn.id, state=TurnState.CANCELLED)
                assert await turnstore_backend.store.turns.cas_update_state(
                    conn, chat.scope, params
                )
        await waits_for(ka.finalized)
        assert ka.is_over
        assert not ka.running
        assert not await ka.touch()
        await ka.wait_finalized()
    assert ka.writes == 0


async def test_a_turn_already_over_is_finalized_at_once(
    turnstore_backend: BackendHarness,
) -> None:
    lc = TurnLifecycle(turnstore_backend.store)
    chat = Chat()
    turn = await started(lc, chat)
    assert (await lc.complete_turn(chat.scope, turn, uuid.uuid4())).won
    async with lc.keep_alive(chat.scope, turn.id, settings=TOUCH_ONLY) as ka:
        await waits_for(ka.finalized)
    # Again while the store already listens: no reconnect re-checks this one.
    other = Chat()
    running = await started(lc, other)
    async with lc.keep_alive(other.scope, running.id, settings=TOUCH_ONLY) as live:
        await watching(turnstore_backend, live)
        finished = await started(lc, chat)
        assert (await lc.complete_turn(chat.scope, finished, uuid.uuid4())).won
        await asyncio.sleep(0.3)  # its notification has come and gone, with no waiter
        async with lc.keep_alive(chat.scope, finished.id, settings=TOUCH_ONLY) as ka:
            await waits_for(ka.finalized)
        assert not live.is_over


async def test_the_watchdogs_finalize_sets_finalized(turnstore_backend: BackendHarness) -> None:
    lc = TurnLifecycle(turnstore_backend.store)
    chat = Chat()
    turn = await started(lc, chat)
    async with lc.keep_alive(chat.scope, turn.id, settings=TOUCH_ONLY) as ka:
        await watching(turnstore_backend, ka)
        await turnstore_backend.advance_time(120)
        async with turnstore_backend.store.connection() as conn:
            assert await turnstore_backend.store.turns.cas_finalize_orphan(conn, turn.id, 60) == 1
        await waits_for(ka.finalized)


async def test_a_rolled_back_or_losing_finalize_signals_nothing(
    turnstore_backend: BackendHarness,
) -> None:
    store = turnstore_backend.store
    lc = TurnLifecycle(store)
    chat = Chat()
    turn = await started(lc, chat)

    class Undo(Exception):
        pass

    async with lc.keep_alive(chat.scope, turn.id, settings=TOUCH_ONLY) as ka:
        await watching(turnstore_backend, ka)

        async def cancel_then_roll_back() -> None:
            async with store.transaction() as txn:
                assert (await lc.cancel_turn(chat.scope, turn, runner=txn)).won
                raise Undo

        with pytest.raises(Undo):
            await cancel_then_roll_back()
        # A CAS that changes nothing: the turn is out of this scope, so no row matches
        # (and the lifecycle answers "not found").
        other_tenant = AccessScope.for_tenant(uuid.uuid4())
        with pytest.raises(TurnNotFoundError):
            await lc.cancel_turn(other_tenant, turn)
        assert await stays_unset(ka.finalized)
        assert ka.running
        # The turn still runs, and a real cancel still gets through.
        assert (await lc.cancel_turn(chat.scope, turn)).won
        await waits_for(ka.finalized)


async def test_exit_stops_watching(turnstore_backend: BackendHarness) -> None:
    lc = TurnLifecycle(turnstore_backend.store)
    chat = Chat()
    turn = await started(lc, chat)
    signals = signals_of(turnstore_backend)
    async with lc.keep_alive(chat.scope, turn.id, settings=TOUCH_ONLY) as ka:
        assert not ka.is_over
        assert signals.waiting == 1
    assert signals.waiting == 0


async def test_a_keep_alive_never_asked_registers_nothing(
    turnstore_backend: BackendHarness,
) -> None:
    lc = TurnLifecycle(turnstore_backend.store)
    chat = Chat()
    turn = await started(lc, chat)
    signals = signals_of(turnstore_backend)
    async with lc.keep_alive(chat.scope, turn.id, settings=TOUCH_ONLY) as ka:
        assert await ka.touch()
        assert signals.waiting == 0
