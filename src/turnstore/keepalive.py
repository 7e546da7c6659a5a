"""Keep-alive: a running turn's proof of life while its stream runs.

A stream calls ``touch()`` per chunk; ``KeepAlive`` turns those calls (and, with the
heartbeat, the mere passing of time) into at most one ``update_progress_at`` per interval,
each committed on its own so the orphan watchdog sees it at once. Made by
``TurnLifecycle.keep_alive``; re-exported from ``turnstore.lifecycle``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Generic
from uuid import UUID

from turnstore._tasks import cancel_until_done
from turnstore.repository import RunnerT, TurnStore
from turnstore.scope import AccessScope
from turnstore.settings import KeepAliveSettings

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
    """

    def __init__(
        self,
        store: TurnStore[RunnerT],
        scope: AccessScope,
        turn_id: UUID,
        settings: KeepAliveSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
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
        self._task: asyncio.Task[None] | None = None

    @property
    def turn_id(self) -> UUID:
        return self._turn_id

    @property
    def running(self) -> bool:
        """False once a write found the turn no longer running (finalized elsewhere)."""
        return self._running

    @property
    def writes(self) -> int:
        """How many ``update_progress_at`` calls this keep-alive has made."""
        return self._writes

    @property
    def silent(self) -> bool:
        """Whether the stream has been silent too long for the heartbeat to vouch for it."""
        return self._silent(self._clock())

    async def __aenter__(self) -> KeepAlive[RunnerT]:
        self._stopping = False
        self._last_touch = self._clock()
        if self._settings.heartbeat:
            self._task = asyncio.create_task(
                self._heartbeat(), name=f"turnstore-keep-alive-{self._turn_id}"
            )
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
        user, or failed by the watchdog). A write error propagates to the caller.
        """
        now = self._clock()
        self._last_touch = now
        if self._running and self._due(now):
            await self._write()
        return self._running

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
            if not self._running or not self._due(now):
                return
            if heartbeat and (self._stopping or self._silent(now)):
                return
            previous, self._last_write = self._last_write, now
            try:
                async with self._store.connection() as runner:
                    if heartbeat and self._stopping:
                        # Stopped while waiting for the connection: no write after stop.
                        self._last_write = previous
                        return
                    rows = await self._turns.update_progress_at(runner, self._scope, self._turn_id)
            except BaseException:
                self._last_write = previous
                raise
            self._writes += 1
            if rows == 0:
                self._running = False

    async def _heartbeat(self) -> None:
        interval = self._settings.interval_secs
        was_silent = False
        while self._running and not self._stopping:
            last = self._last_write
            delay = interval if last is None else last + interval - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
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
                await asyncio.sleep(interval)
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
                await asyncio.sleep(interval)
