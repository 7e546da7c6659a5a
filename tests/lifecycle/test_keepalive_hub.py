"""The keep-alive hub (docs/design.md, *Keep-alive hub*): the rules of a batched keep-alive,
on both backends. Behaviour shared with per-turn writes runs in both modes; the hub's own
rules drive its ticks by hand on a clock that only moves when told."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, cast
from uuid import uuid4

import pytest

from lifecycle_support import Chat, StoreTap
from turnstore.errors import StoreClosedError
from turnstore.hub import KeepAliveHub, KeepAliveHubSource
from turnstore.lifecycle import KeepAliveSettings, TurnLifecycle
from turnstore.model import Turn, TurnState
from turnstore.repository import TurnStore
from turnstore.scope import AccessScope
from turnstore.testing.backends import BackendHarness

ALLOW = AccessScope.allow_all()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def started(store: TurnStore[Any], chat: Chat) -> Turn:
    outcome = await TurnLifecycle(store).begin_turn(chat.scope, chat.params())
    assert outcome.turn is not None
    return outcome.turn


async def reload(store: TurnStore[Any], turn: Turn) -> Turn:
    async with store.connection() as runner:
        found = await store.turns.get_turn(runner, ALLOW, turn.id)
    assert found is not None
    return found


async def eventually(predicate: Any, what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def keep_alive_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("turnstore-keep-alive")]


# --------------------------------------------------------------------------- both modes


@pytest.mark.parametrize("batched", [True, False], ids=["hub", "per-turn"])
async def test_a_stream_keeps_its_turn_alive_and_leaves_no_task(
    turnstore_backend: BackendHarness, batched: bool
) -> None:
    store = turnstore_backend.store
    chat = Chat()
    turn = await started(store, chat)
    settings = KeepAliveSettings(interval_secs=0.02, batched=batched)
    async with TurnLifecycle(store).keep_alive(chat.scope, turn.id, settings=settings) as ka:
        assert ka.batched is batched
        await eventually(lambda: ka.writes >= 2, "two keep-alive writes")
        assert await ka.touch()
    after = await reload(store, turn)
    assert after.last_progress_at is not None
    assert turn.last_progress_at is not None
    assert after.last_progress_at > turn.last_progress_at
    assert keep_alive_tasks() == []


@pytest.mark.parametrize("batched", [True, False], ids=["hub", "per-turn"])
async def test_a_turn_finalized_elsewhere_stops_its_stream(
    turnstore_backend: BackendHarness, batched: bool
) -> None:
    store = turnstore_backend.store
    lc = TurnLifecycle(store)
    chat = Chat()
    turn = await started(store, chat)
    settings = KeepAliveSettings(interval_secs=0.02, batched=batched)
    async with lc.keep_alive(chat.scope, turn.id, settings=settings) as ka:
        await eventually(lambda: ka.writes >= 1, "a keep-alive write")
        assert (await lc.cancel_turn(chat.scope, turn)).won
        await eventually(lambda: not ka.running, "the write that finds the turn cancelled")
        assert not await ka.touch()
    assert (await reload(store, turn)).state is TurnState.CANCELLED


@pytest.mark.parametrize("batched", [True, False], ids=["hub", "per-turn"])
async def test_the_body_error_propagates_and_no_task_is_left(
    turnstore_backend: BackendHarness, batched: bool
) -> None:
    store = turnstore_backend.store
    chat = Chat()
    turn = await started(store, chat)
    settings = KeepAliveSettings(interval_secs=0.02, batched=batched)
    with pytest.raises(RuntimeError, match="stream broke"):
        async with TurnLifecycle(store).keep_alive(chat.scope, turn.id, settings=settings):
            raise RuntimeError("stream broke")
    assert keep_alive_tasks() == []


# --------------------------------------------------------------------------- the hub


class HubStore(StoreTap):
    """A tapped store whose hub runs on a clock the test moves."""

    def __init__(self, inner: TurnStore[Any], clock: Clock) -> None:
        super().__init__(inner)
        self.hub = KeepAliveHub(cast(TurnStore[Any], self), clock=clock)
        #: While set, taking a connection waits until it opens.
        self.gate: asyncio.Event | None = None
        self.waiting = asyncio.Event()

    def connection(self) -> AbstractAsyncContextManager[Any]:
        return self._connection()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        if self.gate is not None:
            self.waiting.set()
            await self.gate.wait()
        async with self.inner.connection() as runner:
            yield runner

    def keepalive_hub(self) -> KeepAliveHub:
        return self.hub


def hub_store(backend: BackendHarness) -> tuple[HubStore, Clock]:
    clock = Clock()
    store = HubStore(backend.store, clock)
    assert isinstance(store, KeepAliveHubSource)
    return store, clock


SLOW = KeepAliveSettings(interval_secs=10, orphan_timeout_secs=60, max_silence_secs=20)


async def test_one_statement_per_tick_each_turn_under_its_own_scope(
    turnstore_backend: BackendHarness,
) -> None:
    store, _clock = hub_store(turnstore_backend)
    typed = cast(TurnStore[Any], store)
    chats = [Chat() for _ in range(6)]
    turns = [await started(typed, chat) for chat in chats]
    answers: list[list[bool]] = [[] for _ in turns]
    # The last stream's scope is another tenant's: its turn is not touched.
    scopes = [chat.scope for chat in chats[:-1]] + [AccessScope.for_tenant(uuid4())]
    streams = [
        store.hub.register(scope, turn.id, SLOW, answers[i].append)
        for i, (scope, turn) in enumerate(zip(scopes, turns, strict=True))
    ]
    await store.hub.tick(0.5)
    assert store.tap.calls["touch_turns"] == 1
    assert store.tap.calls["update_progress_at"] == 0
    assert answers == [[True]] * 5 + [[False]]
    assert not streams[-1].running
    for turn in turns[:-1]:
        assert (await reload(typed, turn)).last_progress_at > turn.last_progress_at  # type: ignore[operator]
    assert await reload(typed, turns[-1]) == turns[-1]
    assert store.hub.statements == 1
    for stream in streams:
        await stream.leave()
    assert store.hub.tasks == 0


async def test_when_a_stream_is_due(turnstore_backend: BackendHarness) -> None:
    """Written at the first tick (heartbeat), then once per interval; a silent stream only
    after a touch; a stream without heartbeat only after a touch."""
    store, clock = hub_store(turnstore_backend)
    typed = cast(TurnStore[Any], store)
    chat = Chat()
    turn = await started(typed, chat)
    answers: list[bool] = []
    beat = store.hub.register(chat.scope, turn.id, SLOW, answers.append)
    quiet_settings = SLOW.model_copy(update={"heartbeat": False})
    quiet = store.hub.register(chat.scope, turn.id, quiet_settings, answers.append)

    async def tick(now: float) -> int:
        clock.now = now
        before = len(answers)
        await store.hub.tick(now)
        return len(answers) - before

    assert await tick(1) == 1  # the heartbeat's first write; the quiet stream waits
    assert beat.last_write == 1
    assert await tick(5) == 0  # not an interval since
    quiet.touch()
    assert await tick(11) == 2  # an interval since: both, the quiet one touched
    assert await tick(21) == 0  # 21 s since the last touch: silent, and nobody touched
    beat.touch()
    assert await tick(31) == 1  # a touch resumes the heartbeat
    await beat.leave()
    quiet.touch()
    await quiet.leave()
    assert await tick(41) == 0  # streams that left are never written
    assert answers == [True] * 4


async def test_a_failed_tick_is_tried_again_at_the_next(
    turnstore_backend: BackendHarness,
) -> None:
    store, _clock = hub_store(turnstore_backend)
    typed = cast(TurnStore[Any], store)
    chat = Chat()
    turn = await started(typed, chat)
    answers: list[bool] = []
    settings = SLOW.model_copy(update={"heartbeat": False})
    stream = store.hub.register(chat.scope, turn.id, settings, answers.append)
    stream.touch()

    async def fail() -> None:
        raise ConnectionError("planted")

    store.tap.before["touch_turns"] = fail
    with pytest.raises(ConnectionError):
        await store.hub.tick(1)
    assert answers == []
    assert stream.last_write is None
    await store.hub.tick(2)  # the touch is still owed, and written now
    assert answers == [True]
    assert stream.last_write == 2
    await stream.leave()


async def test_the_hub_task_runs_while_streams_do_and_ends_with_the_store(
    turnstore_backend: BackendHarness,
) -> None:
    store, _clock = hub_store(turnstore_backend)
    typed = cast(TurnStore[Any], store)
    chat = Chat()
    turn = await started(typed, chat)
    lc = TurnLifecycle(typed)
    settings = KeepAliveSettings(interval_secs=10)
    async with lc.keep_alive(chat.scope, turn.id, settings=settings) as ka:
        assert ka.batched
        assert (store.hub.streams, store.hub.tasks) == (1, 1)
        async with lc.keep_alive(chat.scope, turn.id, settings=settings):
            assert (store.hub.streams, store.hub.tasks) == (2, 1)
        assert (store.hub.streams, store.hub.tasks) == (1, 1)
    assert (store.hub.streams, store.hub.tasks) == (0, 0)
    async with lc.keep_alive(chat.scope, turn.id, settings=settings):
        assert store.hub.tasks == 1
        await store.hub.close()
        assert store.hub.tasks == 0
    with pytest.raises(StoreClosedError):
        store.hub.register(chat.scope, turn.id, settings, lambda _running: None)


async def test_a_stream_that_leaves_during_a_tick_is_not_written_after(
    turnstore_backend: BackendHarness,
) -> None:
    """Leaving while the tick waits for a connection: the tick leaves the stream out, and
    ``leave`` returns only once the tick is done."""
    store, _clock = hub_store(turnstore_backend)
    typed = cast(TurnStore[Any], store)
    chat = Chat()
    turn = await started(typed, chat)
    answers: list[bool] = []
    stream = store.hub.register(chat.scope, turn.id, SLOW, answers.append)
    store.gate = asyncio.Event()
    tick = asyncio.create_task(store.hub.tick(1))
    await asyncio.wait_for(store.waiting.wait(), timeout=10)
    leaving = asyncio.create_task(stream.leave())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not leaving.done(), "leave returned while a tick including the stream was under way"
    store.gate.set()
    await asyncio.wait_for(asyncio.gather(tick, leaving), timeout=10)
    assert store.tap.calls["touch_turns"] == 0
    assert answers == []
    assert await reload(typed, turn) == turn
