"""Finalize signals on PostgreSQL: ``LISTEN`` on one dedicated connection per store, or
polling where ``LISTEN`` cannot work.

The finalizing CAS statements ``pg_notify(finalize_channel(schema), turn_id)`` when they
win (see ``turnstore.postgres.statements``); PostgreSQL delivers the notification when the
transaction commits, and never for a CAS that lost or a transaction that rolled back.

``PostgresFinalizeSignals`` starts its work the first time a stream watches a turn:

- a listener task opens a dedicated connection (outside the pool, with a connect timeout
  and TCP keepalives), runs ``LISTEN``, and wakes the waiters of every turn id it is told
  of.
  When the connection is lost it reconnects with a doubling back-off; every (re)connect
  re-checks every waited turn once, since notifications sent while it was away are lost;
- a checker task reads which waited turns are still running (``STILL_RUNNING``, a
  primary-key lookup, on a pooled connection): each newly watched turn once the listener
  is listening (so a finalize that came before the watch is not missed), every waited turn
  after a reconnect, and, while no listener is listening (notifications off, a pooler
  refusing ``LISTEN``, or the connection down), every waited turn each ``poll_secs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from turnstore.signals import Waiters

__all__ = [
    "DEFAULT_CANCEL_POLL_SECS",
    "LISTENER_BACKOFF_MAX_SECS",
    "LISTENER_BACKOFF_MIN_SECS",
    "PostgresFinalizeSignals",
]

logger = logging.getLogger("turnstore.lifecycle")

#: Seconds between two polls of the waited turns when no listener is listening.
DEFAULT_CANCEL_POLL_SECS = 1.0
#: The listener's first pause before reconnecting; it doubles up to the maximum.
LISTENER_BACKOFF_MIN_SECS = 0.1
LISTENER_BACKOFF_MAX_SECS = 5.0

#: Opens the listener's dedicated connection (in autocommit).
ListenerConnect = Callable[[], Awaitable["psycopg.AsyncConnection[Any]"]]
#: Of the given turn ids, those still running.
StillRunning = Callable[[list[UUID]], Awaitable[set[UUID]]]


class PostgresFinalizeSignals:
    """``FinalizeSignals`` of a ``PostgresStore`` (see the module docstring).

    ``connect`` is ``None`` when notifications are off: the waited turns are then polled
    every ``poll_secs``. ``close()`` stops both tasks and closes the listening connection.
    """

    def __init__(
        self,
        channel: str,
        still_running: StillRunning,
        connect: ListenerConnect | None,
        *,
        poll_secs: float = DEFAULT_CANCEL_POLL_SECS,
    ) -> None:
        self._channel = channel
        self._still_running = still_running
        self._connect = connect
        self._poll_secs = poll_secs
        self._waiters = Waiters()
        self._unchecked: set[UUID] = set()
        self._wake = asyncio.Event()
        self._listening = False
        self._listener_pid: int | None = None
        self._connects = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    # ---- what a stream uses

    def watch(self, turn_id: UUID, event: asyncio.Event) -> None:
        """Set ``event`` once ``turn_id`` is no longer running (see ``FinalizeSignals``);
        starts the listener and the checker on first use."""
        if self._closed:
            return
        self._waiters.add(turn_id, event)
        self._unchecked.add(turn_id)
        self._wake.set()
        self._start()

    def unwatch(self, turn_id: UUID, event: asyncio.Event) -> None:
        """Forget ``event``; idempotent."""
        self._waiters.discard(turn_id, event)

    # ---- state, for operators and tests

    @property
    def channel(self) -> str:
        """The ``LISTEN`` channel (``finalize_channel(schema)``)."""
        return self._channel

    @property
    def notifications(self) -> bool:
        """Whether this store listens (``False``: it polls)."""
        return self._connect is not None

    @property
    def listening(self) -> bool:
        """True while the listening connection has ``LISTEN`` in effect."""
        return self._listening

    @property
    def listener_pid(self) -> int | None:
        """The server process id of the listening connection, while it is connected."""
        return self._listener_pid

    @property
    def connects(self) -> int:
        """How many times the listener has connected and listened (reconnects included)."""
        return self._connects

    @property
    def waiting(self) -> int:
        """How many turns have a waiter."""
        return len(self._waiters)

    # ---- tasks

    def _start(self) -> None:
        if self._tasks:
            return
        self._tasks.append(asyncio.create_task(self._check_loop(), name="turnstore-check"))
        if self._connect is not None:
            self._tasks.append(asyncio.create_task(self._listen_loop(), name="turnstore-listen"))

    async def close(self) -> None:
        """Stop listening and polling; waiters are left as they are. Idempotent."""
        self._closed = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def _listen_loop(self) -> None:
        assert self._connect is not None
        delay = LISTENER_BACKOFF_MIN_SECS
        listen = sql.SQL("LISTEN {}").format(sql.Identifier(self._channel))
        while True:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await self._connect()
                await conn.execute(listen)
                self._listener_pid = conn.info.backend_pid
                self._listening = True
                self._connects += 1
                delay = LISTENER_BACKOFF_MIN_SECS
                # Anything may have been finalized while no one listened: check it all.
                self._unchecked |= self._waiters.turn_ids()
                self._wake.set()
                async for note in conn.notifies():
                    self._on_notification(note.payload)
                raise psycopg.OperationalError("the listening connection stopped")
            except psycopg.errors.FeatureNotSupported as exc:
                # A pooler that refuses LISTEN: poll from now on.
                logger.warning("cannot LISTEN for finalized turns (%s); polling instead", exc)
                self._connect = None
                return
            except (psycopg.Error, OSError) as exc:
                logger.warning(
                    "listening connection for finalized turns lost (%s); reconnecting in %s s",
                    exc,
                    delay,
                )
            finally:
                self._listening = False
                self._listener_pid = None
                self._wake.set()  # the checker polls while no one listens
                if conn is not None:
                    with contextlib.suppress(psycopg.Error, OSError):
                        await conn.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, LISTENER_BACKOFF_MAX_SECS)

    def _on_notification(self, payload: str) -> None:
        try:
            turn_id = UUID(payload)
        except ValueError:
            return  # not ours: someone else's NOTIFY on the channel
        self._waiters.fire(turn_id)

    async def _woken(self, timeout: float | None) -> bool:
        """Wait for ``_wake`` up to ``timeout`` seconds; whether it was set.

        Not ``asyncio.wait_for``: before Python 3.12 it can swallow a cancellation that
        arrives as the event is set, and ``close()`` would wait for ever.
        """
        waiter = asyncio.ensure_future(self._wake.wait())
        try:
            done, _ = await asyncio.wait({waiter}, timeout=timeout)
        finally:
            waiter.cancel()
        return bool(done)

    async def _check_loop(self) -> None:
        loop = asyncio.get_running_loop()
        # Polls keep their cadence however often a new watch wakes the loop in between.
        next_poll = loop.time() + self._poll_secs
        while True:
            if self._listening:
                await self._woken(None)
            elif loop.time() < next_poll:
                await self._woken(next_poll - loop.time())
            polled = not self._listening and loop.time() >= next_poll
            if polled:
                next_poll = loop.time() + self._poll_secs
            self._wake.clear()
            if self._listening:
                ids, self._unchecked = self._unchecked, set()
            elif polled:
                ids, self._unchecked = self._waiters.turn_ids(), set()
            else:
                # Woken while no one listens: check the new watches now, and poll the rest
                # at the next timeout. A listener still connecting re-checks everything.
                ids, self._unchecked = self._unchecked, set()
            ids = {turn_id for turn_id in ids if turn_id in self._waiters}
            if not ids:
                continue
            try:
                running = await self._still_running(sorted(ids))
            except Exception as exc:
                logger.warning("cannot check finalized turns (%s); trying again", exc)
                self._unchecked |= ids
                await asyncio.sleep(self._poll_secs)
                continue
            self._waiters.fire_all_but(ids, running)
