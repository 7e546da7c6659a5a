"""Keep-alive liveness on both backends: leaving the block ends the heartbeat within a bound
even when a cancellation is swallowed, and a silent stream stops being vouched for after
``max_silence_secs``, so the watchdog reclaims it; a later ``touch()`` resumes the writes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, cast

import pydantic
import pytest

import turnstore.keepalive
from lifecycle_support import Chat, StoreTap
from turnstore.lifecycle import KeepAlive, KeepAliveSettings, TurnLifecycle
from turnstore.model import Turn, TurnState
from turnstore.repository import TurnStore
from turnstore.rules import ORPHAN_ERROR_CODE
from turnstore.scope import AccessScope
from turnstore.settings import WatchdogSettings
from turnstore.testing.backends import BackendHarness
from turnstore.watchdog import OrphanWatchdog

HEARTBEAT = KeepAliveSettings(interval_secs=0.01, batched=False)


class StubbornStore(StoreTap):
    """A real store whose ``connection()`` can be made to wait at a gate and swallow
    cancellations while it waits, as psycopg-pool's wait for a free connection did on
    Python 3.11: ``swallow`` cancellations are caught and the wait goes on."""

    def __init__(self, inner: TurnStore[Any]) -> None:
        super().__init__(inner)
        self.blocking = False
        self.swallow = 0
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    def connection(self) -> AbstractAsyncContextManager[Any]:
        return self._connection()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        if self.blocking:
            self.waiting.set()
            while not self.gate.is_set():
                try:
                    await self.gate.wait()
                except asyncio.CancelledError:
                    if self.swallow <= 0:
                        raise
                    self.swallow -= 1
        async with self.inner.connection() as conn:
            yield conn


class PacingClock:
    """The keep-alive's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def heartbeat_tasks() -> list[asyncio.Task[Any]]:
    return [
        t
        for t in asyncio.all_tasks()
        if t.get_name().startswith("turnstore-keep-alive") and not t.done()
    ]


async def started_turn(store: TurnStore[Any], chat: Chat) -> Turn:
    outcome = await TurnLifecycle(store).begin_turn(chat.scope, chat.params())
    assert outcome.turn is not None
    return outcome.turn


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def reload(store: TurnStore[Any], turn: Turn) -> Turn:
    async with store.connection() as conn:
        row = await store.turns.find_by_chat_and_request_id(
            conn, AccessScope.allow_all(), turn.tenant_id, turn.chat_id, turn.request_id
        )
    assert row is not None
    return row


# --------------------------------------------------------------------------- settings


def test_the_default_silence_is_below_the_orphan_timeout() -> None:
    settings = KeepAliveSettings()
    assert settings.max_silence_secs is None
    assert settings.silence_limit_secs == 120.0 < settings.orphan_timeout_secs == 300
    watchdog = WatchdogSettings(orphan_timeout_secs=60)
    derived = KeepAliveSettings.for_watchdog(watchdog)
    assert derived.silence_limit_secs == 24.0
    assert KeepAliveSettings.for_watchdog(watchdog, max_silence_secs=59).silence_limit_secs == 59


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_silence_secs": 0},
        {"max_silence_secs": 300},  # not below the orphan timeout
        {"max_silence_secs": 10, "interval_secs": 20},  # shorter than the interval
    ],
)
def test_bad_silence_limits_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        KeepAliveSettings(**kwargs)


def test_for_watchdog_checks_the_silence_limit_against_its_timeout() -> None:
    watchdog = WatchdogSettings(orphan_timeout_secs=60)
    with pytest.raises(pydantic.ValidationError, match="max_silence_secs"):
        KeepAliveSettings.for_watchdog(watchdog, max_silence_secs=60)


# --------------------------------------------------------------------------- stop


async def test_leaving_ends_a_heartbeat_whose_first_cancellation_is_swallowed(
    turnstore_backend: BackendHarness,
) -> None:
    """One ``task.cancel()`` swallowed by the wait for a connection: ``stop()`` cancels
    again until the heartbeat is done, and returns promptly."""
    store = StubbornStore(turnstore_backend.store)
    typed = cast(TurnStore[Any], store)
    chat = Chat()
    turn = await started_turn(typed, chat)
    store.blocking, store.swallow = True, 1
    keep_alive: KeepAlive[Any] = TurnLifecycle(typed).keep_alive(
        chat.scope, turn.id, settings=HEARTBEAT
    )
    try:
        await asyncio.wait_for(keep_alive.__aenter__(), timeout=10)
        await asyncio.wait_for(store.waiting.wait(), timeout=10)
        exit_began = asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(keep_alive.__aexit__(None, None, None), timeout=2.0)
        except asyncio.TimeoutError:
            pytest.fail("leaving keep_alive hung: the swallowed cancellation was not repeated")
        assert asyncio.get_running_loop().time() - exit_began < 2.0
        assert heartbeat_tasks() == []
        assert store.swallow == 0  # the swallowed cancellation really happened
        assert store.tap.calls["update_progress_at"] == 0
    finally:
        store.gate.set()
        for task in heartbeat_tasks():
            task.cancel()


async def test_a_heartbeat_that_outlives_stop_writes_nothing_more(
    turnstore_backend: BackendHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A heartbeat that swallows every cancellation: ``stop()`` gives up after its bound,
    and the stop flag keeps the heartbeat from writing once its wait ends."""
    monkeypatch.setattr(turnstore.keepalive, "STOP_BOUND_SECS", 0.3)
    store = StubbornStore(turnstore_backend.store)
    typed = cast(TurnStore[Any], store)
    chat = Chat()
    turn = await started_turn(typed, chat)
    store.blocking, store.swallow = True, 10**9
    keep_alive: KeepAlive[Any] = TurnLifecycle(typed).keep_alive(
        chat.scope, turn.id, settings=HEARTBEAT
    )
    try:
        await asyncio.wait_for(keep_alive.__aenter__(), timeout=10)
        await asyncio.wait_for(store.waiting.wait(), timeout=10)
        await asyncio.wait_for(keep_alive.__aexit__(None, None, None), timeout=5)
        [leftover] = heartbeat_tasks()
        store.blocking = False
        store.gate.set()
        await asyncio.wait_for(asyncio.wait({leftover}), timeout=5)
        assert store.tap.calls["update_progress_at"] == 0
        assert keep_alive.writes == 0
    finally:
        store.gate.set()
        for task in heartbeat_tasks():
            task.cancel()


# --------------------------------------------------------------------------- silence


SILENT_AFTER_1S = KeepAliveSettings(
    interval_secs=0.01, orphan_timeout_secs=60, max_silence_secs=1, batched=False
)


async def go_silent(
    keep_alive: KeepAlive[Any], clock: PacingClock, sleep: Callable[[float], Awaitable[None]]
) -> int:
    """Let the heartbeat write while the stream is recent, then pass the silence limit;
    the number of writes made by then."""
    await eventually(lambda: keep_alive.writes >= 1, "the first heartbeat write")
    for _ in range(3):  # 0.25, 0.5, 0.75 s: still within the silence limit
        before = keep_alive.writes
        clock.now += 0.25
        await eventually(lambda: keep_alive.writes > before, "a heartbeat write")  # noqa: B023
    clock.now = 1.0
    await sleep(0.1)  # a write already under way may finish
    return keep_alive.writes


async def test_a_silent_stream_is_no_longer_vouched_for_and_is_reclaimed(
    turnstore_backend: BackendHarness,
) -> None:
    store = turnstore_backend.store
    chat = Chat()
    turn = await started_turn(store, chat)
    clock = PacingClock()
    lifecycle = TurnLifecycle(store)
    async with lifecycle.keep_alive(
        chat.scope, turn.id, settings=SILENT_AFTER_1S, clock=clock
    ) as keep_alive:
        writes = await go_silent(keep_alive, clock, asyncio.sleep)
        assert writes >= 4
        assert keep_alive.silent
        for _ in range(5):
            clock.now += 0.25
            await asyncio.sleep(0.05)
        assert keep_alive.writes == writes, "the heartbeat wrote for a silent stream"
        # The provider call never returned: the watchdog reclaims the turn.
        await turnstore_backend.advance_time(61)
        watchdog = OrphanWatchdog(store, WatchdogSettings(orphan_timeout_secs=60))
        report = await watchdog.run_once()
        assert [t.id for t in report.finalized] == [turn.id]
        row = await reload(store, turn)
        assert (row.state, row.error_code) == (TurnState.FAILED, ORPHAN_ERROR_CODE)
        # A chunk that turns up after all learns that the turn is gone.
        assert not await keep_alive.touch()
        assert not keep_alive.running
    assert heartbeat_tasks() == []


async def test_a_touch_after_silence_resumes_the_writes(
    turnstore_backend: BackendHarness,
) -> None:
    store = turnstore_backend.store
    chat = Chat()
    turn = await started_turn(store, chat)
    clock = PacingClock()
    lifecycle = TurnLifecycle(store)
    async with lifecycle.keep_alive(
        chat.scope, turn.id, settings=SILENT_AFTER_1S, clock=clock
    ) as keep_alive:
        writes = await go_silent(keep_alive, clock, asyncio.sleep)
        clock.now += 0.5
        await asyncio.sleep(0.05)
        assert keep_alive.writes == writes
        assert await keep_alive.touch()  # a chunk at last: written at once
        assert keep_alive.writes == writes + 1
        assert not keep_alive.silent
        clock.now += 0.25
        await eventually(lambda: keep_alive.writes > writes + 1, "the heartbeat to resume")
    row = await reload(store, turn)
    assert row.state is TurnState.RUNNING
