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

from turnstore._compat_async import Task, sleep, spawn, wait_tasks
from turnstore.repository import RunnerT, TurnStore
from turnstore.scope import AccessScope, check_scope
from turnstore.settings import KeepAliveSettings
from turnstore.telemetry import NO_TELEMETRY, Telemetry
from turnstore.validation import check_callable, check_instance, check_uuid

__all__ = ["KeepAlive"]

# The logger keeps the name it had when keep-alive was part of the lifecycle module, so a
# host's logging configuration for "turnstore.lifecycle" still covers it.
logger = logging.getLogger("turnstore.lifecycle")


class KeepAlive(Generic[RunnerT]):
    """Keeps one running turn's ``last_progress_at`` fresh while its stream runs.

    Use as ``async with lifecycle.keep_alive(scope, turn.id) as ka:`` and ``await
    ka.touch()`` per chunk. Writes are coalesced: at most one ``update_progress_at`` per
    interval, however many chunks arrive or tasks touch at once. Each write commits on its
    own (the watchdog must see it at once), outside any host transaction. On exit the
    background task is cancelled and awaited; an exception from the body propagates.
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
        self._running = True
        self._writes = 0
        self._task: Task[None] | None = None
        self._telemetry = telemetry

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

    async def __aenter__(self) -> KeepAlive[RunnerT]:
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
        """Stop the background refresh and wait for it; idempotent."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # ``wait`` rather than ``await task``: a cancellation of the caller still propagates.
        await wait_tasks([task])
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error

    async def touch(self) -> bool:
        """Record progress; write it if the last write is an interval old.

        Returns whether the turn is still running as far as the last write knows; a
        ``False`` tells the stream that the turn was finalized elsewhere (cancelled by the
        user, or failed by the watchdog). A write error propagates to the caller.
        """
        if self._running and self._due(self._clock()):
            await self._write()
        return self._running

    def _due(self, now: float) -> bool:
        last = self._last_write
        return last is None or now - last >= self._settings.interval_secs

    async def _write(self) -> None:
        async with self._lock:
            # Another touch may have written while this one waited for the lock. The
            # reading that decides is the one recorded: one clock read per write.
            now = self._clock()
            if not self._running or not self._due(now):
                return
            previous, self._last_write = self._last_write, now
            try:
                with self._telemetry.span(
                    "turnstore.keep_alive", {"turnstore.turn_id": self._turn_id}
                ):
                    async with self._store.connection() as runner:
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

    async def _heartbeat(self) -> None:
        interval = self._settings.interval_secs
        while self._running:
            last = self._last_write
            delay = interval if last is None else last + interval - self._clock()
            if delay > 0:
                await sleep(delay)
            try:
                await self._write()
            except Exception:
                logger.warning(
                    "keep-alive write for turn %s failed; retrying in %s s",
                    self._turn_id,
                    interval,
                    exc_info=True,
                )
                await sleep(interval)
