"""Keep-alive: a running turn's proof of life while its stream runs.

A stream calls ``touch()`` per chunk; ``KeepAlive`` turns those calls (and, with the
heartbeat, the mere passing of time) into at most one ``update_progress_at`` per interval,
each committed on its own so the orphan watchdog sees it at once. Made by
``TurnLifecycle.keep_alive``; re-exported from ``turnstore.lifecycle``.

A keep-alive also tells its stream when the turn is over (cancelled by the user in any
instance, failed by the watchdog) without waiting for a write: ``finalized`` (an
``asyncio.Event``), ``is_over`` and ``wait_finalized()`` are set by the store's finalize
signals (``turnstore.signals``) or by a write that found the turn no longer running. The
first use of any of them registers the turn with the store's signals
(docs/lifecycle.md, *Cancel*).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Generic
from uuid import UUID

from turnstore._compat_async import Task, cancel_until_done, sleep, spawn
from turnstore.hub import HubStream, KeepAliveHubSource
from turnstore.repository import RunnerT, TurnStore
from turnstore.scope import AccessScope, check_scope
from turnstore.settings import KeepAliveSettings
from turnstore.signals import FinalizeSignals, FinalizeSignalSource
from turnstore.telemetry import NO_TELEMETRY, Telemetry
from turnstore.validation import check_callable, check_instance, check_uuid

__all__ = ["STOP_BOUND_SECS", "KeepAlive"]

#: How long leaving ``keep_alive`` keeps cancelling a heartbeat that has not ended yet.
#: The heartbeat also checks a stop flag before each write, so even one that outlives this
#: bound writes nothing more.
STOP_BOUND_SECS = 5.0

# The logger keeps the name it had when keep-alive was part of the lifecycle module, so a
# host's logging configuration for "turnstore.lifecycle" still covers it.
logger = logging.getLogger("turnstore.lifecycle")


class KeepAlive(Generic[RunnerT]):
    """Keeps one running turn's ``last_progress_at`` fresh while its stream runs.

    Use as ``async with lifecycle.keep_alive(scope, turn.id) as ka:`` and ``await
    ka.touch()`` per chunk. Writes are coalesced: at most one ``update_progress_at`` per
    interval, however many chunks arrive or tasks touch at once. Each write commits on its
    own (the watchdog must see it at once), outside any host transaction.

    The heartbeat writes only while the stream has touched within
    ``settings.silence_limit_secs`` (counted from entering the block): a stream silent for
    longer is left to become an orphan, until a ``touch()`` resumes the writes. On exit a
    stop flag ends the writes and the background task is cancelled until it is done
    (bounded by ``STOP_BOUND_SECS``); an exception from the body propagates.

    ``finalized``, ``is_over`` and ``wait_finalized()`` tell the stream that the turn is
    no longer running, as soon as the store learns it (see the module docstring).
    """

    def __init__(
        self,
        store: TurnStore[RunnerT],
        scope: AccessScope,
        turn_id: UUID,
        settings: KeepAliveSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        check_scope(scope)
        check_uuid("turn_id", turn_id)
        check_instance("settings", settings, KeepAliveSettings)
        check_callable("clock", clock)
        self._store = store
        self._turns = store.turns
        self._scope = scope
        self._turn_id = turn_id
        self._settings = settings
        self._clock = clock
        self._lock = asyncio.Lock()
        self._last_write: float | None = None
        self._last_touch = clock()
        self._stopping = False
        self._running = True
        self._writes = 0
        self._task: Task[None] | None = None
        self._telemetry = telemetry
        self._finalized = asyncio.Event()
        self._signals: FinalizeSignals | None = None
        self._watched = False
        self._stream: HubStream | None = None  # async-only

    @property
    def turn_id(self) -> UUID:
        """The turn this keep-alive keeps alive."""
        return self._turn_id

    @property
    def running(self) -> bool:
        """False once the turn is known to be no longer running: a write found it so, or
        (after ``finalized`` was first used) the store signalled its finalize."""
        return self._running and not self._finalized.is_set()

    @property
    def finalized(self) -> asyncio.Event:
        """Set once the turn is no longer running (finalized anywhere, or gone).

        The first use registers the turn with the store's finalize signals; a stream loop
        can then check ``finalized.is_set()`` per chunk, or race ``finalized.wait()``
        against the provider. A store without finalize signals sets it only when a write
        finds the turn over.
        """
        self._watch()
        return self._finalized

    @property
    def is_over(self) -> bool:
        """``finalized.is_set()``: whether the stream should stop, without a write."""
        self._watch()
        return self._finalized.is_set()

    async def wait_finalized(self) -> None:
        """Return once the turn is no longer running (see ``finalized``)."""
        self._watch()
        await self._finalized.wait()

    def _watch(self) -> None:
        if self._watched:
            return
        self._watched = True
        if not self._running:
            self._finalized.set()
        elif isinstance(self._store, FinalizeSignalSource):
            self._signals = self._store.finalize_signals()
            self._signals.watch(self._turn_id, self._finalized)

    def _unwatch(self) -> None:
        signals, self._signals = self._signals, None
        if signals is not None:
            signals.unwatch(self._turn_id, self._finalized)

    @property
    def writes(self) -> int:
        """How many keep-alive writes of this turn were made: its ``update_progress_at``
        calls, or the hub statements that included it."""
        return self._writes

    @property
    def batched(self) -> bool:
        """Whether the store's keep-alive hub writes for this stream (inside the block)."""
        return self._stream is not None  # sync: return False

    @property
    def silent(self) -> bool:
        """Whether the stream has been silent too long for the heartbeat to vouch for it."""
        return self._silent(self._clock())

    async def __aenter__(self) -> KeepAlive[RunnerT]:
        self._stopping = False
        self._last_touch = self._clock()
        if self._settings.batched and isinstance(self._store, KeepAliveHubSource):  # async-only
            self._stream = self._store.keepalive_hub().register(
                self._scope, self._turn_id, self._settings, self._hub_wrote
            )
            return self
        if self._settings.heartbeat:
            self._task = spawn(self._heartbeat, name=f"turnstore-keep-alive-{self._turn_id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop the background refresh and wait for it, within ``STOP_BOUND_SECS``;
        idempotent.

        The stop flag goes up first (the heartbeat checks it before each write), then the
        task is cancelled again and again until it is done: one cancellation can be
        swallowed by a library call the heartbeat is waiting in (a pool's wait for a free
        connection), and must not leave the heartbeat running.
        """
        self._stopping = True
        self._unwatch()
        if self._stream is not None:  # async-only
            stream, self._stream = self._stream, None
            await stream.leave()
        task, self._task = self._task, None
        if task is None:
            return
        if not await cancel_until_done(task, total_secs=STOP_BOUND_SECS):
            logger.warning(
                "keep-alive heartbeat for turn %s still running %s s after stop; it "
                "writes nothing more",
                self._turn_id,
                STOP_BOUND_SECS,
            )
            return
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error

    async def touch(self) -> bool:
        """Record progress; write it if the last write is an interval old.

        Returns whether the turn is still running as far as the last write knows; a
        ``False`` tells the stream that the turn was finalized elsewhere (cancelled by the
        user, or failed by the watchdog). A write error propagates to the caller. Batched
        (the store's hub writes), a touch only records progress, written at the hub's next
        tick, and never raises.
        """
        now = self._clock()
        self._last_touch = now
        if self._stream is not None:  # async-only
            self._stream.touch()
            return self.running
        if self.running and self._due(now):
            await self._write()
        return self.running

    def _hub_wrote(self, running: bool) -> None:  # async-only
        """The hub wrote this stream: count it, and stop when the turn no longer runs."""
        self._writes += 1
        self._telemetry.keep_alive_write(running)
        if not running:
            self._running = False
            self._finalized.set()

    def _due(self, now: float) -> bool:
        last = self._last_write
        return last is None or now - last >= self._settings.interval_secs

    def _silent(self, now: float) -> bool:
        return now - self._last_touch >= self._settings.silence_limit_secs

    async def _write(self, *, heartbeat: bool = False) -> None:
        async with self._lock:
            # Another touch may have written while this one waited for the lock. The
            # reading that decides is the one recorded: one clock read per write.
            now = self._clock()
            if not self.running or not self._due(now):
                return
            if heartbeat and (self._stopping or self._silent(now)):
                return
            previous, self._last_write = self._last_write, now
            try:
                with self._telemetry.span(
                    "turnstore.keep_alive", {"turnstore.turn_id": self._turn_id}
                ):
                    async with self._store.connection() as runner:
                        if heartbeat and self._stopping:
                            # Stopped while waiting for the connection: no write after stop.
                            self._last_write = previous
                            return
                        rows = await self._turns.update_progress_at(
                            runner, self._scope, self._turn_id
                        )
            except BaseException:
                self._last_write = previous
                raise
            self._writes += 1
            self._telemetry.keep_alive_write(rows != 0)
            if rows == 0:
                self._running = False
                self._finalized.set()

    async def _heartbeat(self) -> None:
        interval = self._settings.interval_secs
        was_silent = False
        while self.running and not self._stopping:
            last = self._last_write
            delay = interval if last is None else last + interval - self._clock()
            if delay > 0:
                await sleep(delay)
            if self._stopping:
                return
            silent = self._silent(self._clock())
            if silent != was_silent:
                was_silent = silent
                if silent:
                    logger.warning(
                        "turn %s: no touch() for %s s; the heartbeat stops vouching for it",
                        self._turn_id,
                        self._settings.silence_limit_secs,
                    )
            if silent:
                # Look again in an interval: a touch() meanwhile resumes the writes.
                await sleep(interval)
                continue
            try:
                await self._write(heartbeat=True)
            except Exception:
                logger.warning(
                    "keep-alive write for turn %s failed; retrying in %s s",
                    self._turn_id,
                    interval,
                    exc_info=True,
                )
                await sleep(interval)
