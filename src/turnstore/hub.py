"""The keep-alive hub: one ``touch_turns`` statement per tick for every stream of a store.

A service streaming hundreds of turns at once would otherwise send one
``update_progress_at`` per stream per interval, and the client's cost per round trip,
not the database, bounds it. A store hands out one ``KeepAliveHub``
(``store.keepalive_hub()``); each ``KeepAlive`` in batched mode (the default) registers a
``HubStream`` with it instead of running a heartbeat task of its own. The hub keeps one
background task per distinct interval, started on the first registration and ended when the
last stream of that interval leaves or the store closes. On each tick it writes the due
streams of the whole process in one ``touch_turns`` statement (a few, striped, when there
are many, so the updates stay HOT), each turn checked against its own stream's scope, and
tells every written stream whether its turn still runs (docs/design.md, *Keep-alive hub*).

asyncio only: the sync API keeps its per-turn writes (docs/sync.md).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

from turnstore._compat_async import Event, Task, cancel_until_done, sleep, spawn, wait_event
from turnstore.errors import StoreClosedError
from turnstore.repository import TurnStore
from turnstore.scope import MAX_TOUCH_TARGETS, AccessScope, check_scope
from turnstore.settings import KeepAliveSettings
from turnstore.telemetry import NO_TELEMETRY, Telemetry
from turnstore.validation import check_callable, check_instance, check_int, check_uuid

__all__ = [
    "DEFAULT_STRIPES",
    "HUB_STOP_BOUND_SECS",
    "HubStream",
    "KeepAliveHub",
    "KeepAliveHubSource",
]

#: How long closing a hub, or a stream leaving during a write that includes it, waits.
HUB_STOP_BOUND_SECS = 5.0

logger = logging.getLogger("turnstore.hub")

#: Ticks are computed, not accumulated: a stream written at tick k is due again at tick
#: k + 1 although the subtraction of two float tick times may fall a hair short.
_TICK_SLACK = 1e-6


#: Ticks of one interval that may wait for their statements at once.
MAX_TICKS = 4
#: Streams per statement below which a tick is not split further.
STRIPE_ROWS = 32
#: How many statements a tick of many streams is split into, by default (see ``_Ticker.tick``).
DEFAULT_STRIPES = 4


def _turn_key(stream: HubStream) -> UUID:
    return stream.turn_id


class HubStream:
    """One stream's entry in a hub: what decides whether a tick writes it, and where the
    answer goes. Made by ``KeepAliveHub.register``; the ``KeepAlive`` owning it calls
    ``touch`` per chunk and ``leave`` on exit."""

    __slots__ = (
        "_on_written",
        "_ticker",
        "flight",
        "heartbeat",
        "interval",
        "last_touch",
        "last_write",
        "left",
        "running",
        "scope",
        "silence_limit",
        "touched",
        "turn_id",
    )

    def __init__(
        self,
        ticker: _Ticker,
        scope: AccessScope,
        turn_id: UUID,
        settings: KeepAliveSettings,
        on_written: Callable[[bool], None],
        now: float,
    ) -> None:
        self._ticker = ticker
        self._on_written = on_written
        self.scope = scope
        self.turn_id = turn_id
        self.interval = settings.interval_secs
        self.heartbeat = settings.heartbeat
        self.silence_limit = settings.silence_limit_secs
        self.last_touch = now
        self.touched = False
        #: The tick that last wrote this stream, ``None`` before its first write.
        self.last_write: float | None = None
        self.left = False
        self.running = True
        #: Set while a tick is writing this stream; that tick sets it when done.
        self.flight: Event | None = None

    def touch(self) -> None:
        """Record progress: the next tick writes it, at most one interval from now."""
        self.last_touch = self._ticker.hub.clock()
        self.touched = True

    def due(self, now: float) -> bool:
        """Whether the tick at ``now`` writes this stream: it still runs and has not left,
        its last write is an interval old, and it touched since, or its heartbeat still
        vouches for it (a touch within ``silence_limit``)."""
        if self.left or not self.running or self.flight is not None:
            return False
        last = self.last_write
        if last is not None and now - last < self.interval * (1 - _TICK_SLACK):
            return False
        return self.touched or (self.heartbeat and now - self.last_touch < self.silence_limit)

    def written(self, now: float, running: bool) -> None:
        self.last_write = now
        if not running:
            self.running = False
        self._on_written(running)

    async def leave(self) -> None:
        """Leave the hub; idempotent. A tick that has not sent its statement yet leaves this
        stream out; one already sending it is waited for (within ``HUB_STOP_BOUND_SECS``),
        so no write for this stream lands after ``leave`` returns."""
        if self.left:
            return
        self.left = True
        await self._ticker.remove(self)


class _Ticker:
    """The streams of one interval and the task that ticks for them."""

    def __init__(self, hub: KeepAliveHub, interval: float) -> None:
        self.hub = hub
        self.interval = interval
        self.streams: dict[int, HubStream] = {}
        self.task: Task[None] | None = None
        #: Ticks under way: a tick starts on time even while an earlier one still waits
        #: for its statement (up to ``MAX_TICKS``); a stream is in one tick at a time.
        self.ticking: set[asyncio.Task[None]] = set()

    def add(self, stream: HubStream) -> None:
        self.streams[id(stream)] = stream
        if self.task is None or self.task.done():
            self.task = spawn(self._run, name=f"turnstore-keep-alive-hub-{self.interval}")

    async def remove(self, stream: HubStream) -> None:
        self.streams.pop(id(stream), None)
        if stream.flight is not None:
            await wait_event(stream.flight, HUB_STOP_BOUND_SECS)
        if not self.streams and self.task is not None:
            # The last stream left: end the task now (a tick under way finishes on its
            # own; a registration meanwhile starts a new task).
            task, self.task = self.task, None
            await cancel_until_done(task, total_secs=HUB_STOP_BOUND_SECS)

    async def _run(self) -> None:
        clock = self.hub.clock
        interval = self.interval
        start = clock()
        while self.streams and not self.hub.closed:
            tick = start + interval * (math.floor((clock() - start) / interval) + 1)
            if (delay := tick - clock()) > 0:
                await sleep(delay)
            if len(self.ticking) < MAX_TICKS:
                task = asyncio.ensure_future(self._logged_tick(tick))
                self.ticking.add(task)
                task.add_done_callback(self.ticking.discard)

    async def _logged_tick(self, now: float) -> None:
        try:
            await self.tick(now)
        except Exception:
            logger.warning(
                "keep-alive hub: a write of %s s streams failed; retrying at the next tick",
                self.interval,
                exc_info=True,
            )

    async def tick(self, now: float) -> None:
        """Write every stream due at ``now``, in ``hub.stripes`` statements (fewer for few
        streams), each at most ``MAX_TOUCH_TARGETS`` turns.

        The due streams are sorted by turn id and dealt round-robin: ids in insertion order
        (UUIDv7) put neighbours on one heap page, so each statement changes only a share of
        a page's rows, whose new versions fit in the page's free space (a HOT update), and
        the next statement finds the versions of the previous one dead and prunes them
        (docs/design.md, *Keep-alive hub*)."""
        due = sorted((s for s in self.streams.values() if s.due(now)), key=_turn_key)
        if not due:
            return
        flight = Event()
        for stream in due:
            stream.flight = flight
        try:
            stripes = min(self.hub.stripes, max(1, len(due) // STRIPE_ROWS))
            for stripe in range(stripes):
                batch = due[stripe::stripes]
                for first in range(0, len(batch), MAX_TOUCH_TARGETS):
                    await self._write(batch[first : first + MAX_TOUCH_TARGETS], now)
        finally:
            for stream in due:
                stream.flight = None
            flight.set()

    async def _write(self, batch: list[HubStream], now: float) -> None:
        hub = self.hub
        with hub.telemetry.span("turnstore.keep_alive_hub", {"turnstore.streams": len(batch)}):
            async with hub.store.connection() as runner:
                # Streams that left while the connection was awaited are not written.
                batch = [s for s in batch if not s.left]
                if not batch:
                    return
                touched = [s.touched for s in batch]
                for stream in batch:
                    stream.touched = False
                try:
                    running = await hub.store.turns.touch_turns(
                        runner, [(s.scope, s.turn_id) for s in batch]
                    )
                except BaseException:
                    for stream, was in zip(batch, touched, strict=True):
                        stream.touched = stream.touched or was
                    raise
        hub.statements += 1
        for stream, still in zip(batch, running, strict=True):
            stream.written(now, still)

    async def close(self) -> None:
        for tick in list(self.ticking):
            await cancel_until_done(tick, total_secs=HUB_STOP_BOUND_SECS)
        task, self.task = self.task, None
        if task is not None and not await cancel_until_done(task, total_secs=HUB_STOP_BOUND_SECS):
            logger.warning(
                "keep-alive hub task still running %s s after close", HUB_STOP_BOUND_SECS
            )


class KeepAliveHub:
    """Batches the keep-alive writes of every stream of one store (see the module
    docstring). Get it from the store (``store.keepalive_hub()``); ``KeepAlive`` registers
    with it unless ``KeepAliveSettings(batched=False)``.

    ``statements`` counts the ``touch_turns`` statements sent so far. A tick of many
    streams is ``stripes`` statements (default 4), so that the updates stay HOT.
    """

    def __init__(
        self,
        store: TurnStore[Any],
        *,
        clock: Callable[[], float] = time.monotonic,
        telemetry: Telemetry = NO_TELEMETRY,
        stripes: int = DEFAULT_STRIPES,
    ) -> None:
        check_callable("clock", clock)
        check_int("stripes", stripes, 1, 64)
        self.stripes = stripes
        self.store = store
        self.clock = clock
        self.telemetry = telemetry
        self.closed = False
        self.statements = 0
        self._tickers: dict[float, _Ticker] = {}

    def register(
        self,
        scope: AccessScope,
        turn_id: UUID,
        settings: KeepAliveSettings,
        on_written: Callable[[bool], None],
    ) -> HubStream:
        """Add a stream: from the next tick of its interval on, its due writes go out with
        every other stream's. ``on_written(running)`` is called after each write of it."""
        check_scope(scope)
        check_uuid("turn_id", turn_id)
        check_instance("settings", settings, KeepAliveSettings)
        check_callable("on_written", on_written)
        if self.closed:
            raise StoreClosedError("the keep-alive hub is closed (its store was closed)")
        interval = settings.interval_secs
        ticker = self._tickers.get(interval)
        if ticker is None:
            ticker = self._tickers[interval] = _Ticker(self, interval)
        stream = HubStream(ticker, scope, turn_id, settings, on_written, self.clock())
        ticker.add(stream)
        return stream

    async def tick(self, now: float) -> None:
        """Write every stream due at ``now`` (a reading of the hub's clock), of every
        interval: what each tick task does on its own. Errors propagate (a tick task logs
        them and tries again at its next tick; the streams stay due)."""
        for ticker in list(self._tickers.values()):
            await ticker.tick(now)

    @property
    def streams(self) -> int:
        """How many streams are registered."""
        return sum(len(t.streams) for t in self._tickers.values())

    @property
    def tasks(self) -> int:
        """How many tick tasks are running (one per interval that has streams)."""
        return sum(1 for t in self._tickers.values() if t.task is not None and not t.task.done())

    async def close(self) -> None:
        """Stop every tick task (bounded); the store's ``close`` calls it. Idempotent."""
        self.closed = True
        for ticker in list(self._tickers.values()):
            await ticker.close()


@runtime_checkable
class KeepAliveHubSource(Protocol):
    """A ``TurnStore`` that batches keep-alive writes (both built-in asyncio stores do)."""

    def keepalive_hub(self) -> KeepAliveHub:
        """The store's one ``KeepAliveHub`` (created on first use)."""
        ...
