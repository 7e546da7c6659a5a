"""The watchdog's leader election on PostgreSQL: a lease row, safe through poolers.

Leadership is a row of ``watchdog_leases`` (migration 0004): ``holder`` leads until
``expires_at``, both written by one atomic statement (``TAKE_LEASE``) against the
database's clock. Nothing lives in a session, so the election works the same on a direct
connection and behind a transaction-pooling PgBouncer, and it uses the store's own pooled
connections. See docs/design.md, *Leader election*, for the timing argument.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg
from psycopg import sql

from turnstore._tasks import cancel_until_done
from turnstore.errors import InvalidParameterError, TurnStoreError
from turnstore.postgres import statements as q
from turnstore.postgres.errors import driver_errors
from turnstore.postgres.statements import DEFAULT_SCHEMA

__all__ = [
    "DEFAULT_LEASE_SECS",
    "DEFAULT_RENEW_INTERVAL_SECS",
    "WATCHDOG_LEASE_NAME",
    "LeaseElection",
]

logger = logging.getLogger("turnstore.watchdog")

#: How long a taken or renewed lease lasts, in the database's seconds.
DEFAULT_LEASE_SECS = 30.0
#: How often the leader renews its lease in the background.
DEFAULT_RENEW_INTERVAL_SECS = 10.0
#: The lease of the orphan watchdog (one per schema: the table lives in the schema).
WATCHDOG_LEASE_NAME = "orphan-watchdog"

Connection = psycopg.AsyncConnection[Any]
ConnectionSource = Callable[[], AbstractAsyncContextManager[Connection]]


class _NoAnswer(Exception):
    """The lease statement did not finish within its bound."""


class LeaseElection:
    """Leadership = holding the row ``name`` of ``watchdog_leases`` before it expires.

    ``acquire()`` takes a free or expired lease, or renews this instance's own, in one
    statement; while leading, a background task renews it every ``renew_interval_secs``.
    This instance considers itself leader only until ``sent + lease_secs - margin_secs``
    (``sent``: its own monotonic clock read just before the last successful take or renewal
    was sent), which falls before the database lets anyone else take the lease; a renewal
    that fails or comes late ends leadership here first. ``release()`` stops renewing and
    deletes the row, so another instance can take over at once.

    ``connection`` hands out autocommit connections (``PostgresStore.connection``); every
    statement is bounded by ``renew_interval_secs``.
    """

    def __init__(
        self,
        connection: ConnectionSource,
        schema: str = DEFAULT_SCHEMA,
        *,
        name: str = WATCHDOG_LEASE_NAME,
        lease_secs: float = DEFAULT_LEASE_SECS,
        renew_interval_secs: float | None = None,
        margin_secs: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        renew = lease_secs / 3 if renew_interval_secs is None else renew_interval_secs
        margin = lease_secs / 10 if margin_secs is None else margin_secs
        if not lease_secs > 0:
            raise InvalidParameterError(f"lease_secs must be positive, got {lease_secs!r}")
        if not renew > 0:
            raise InvalidParameterError(f"renew_interval_secs must be positive, got {renew!r}")
        if not 0 < margin < lease_secs:
            raise InvalidParameterError(
                f"margin_secs must be positive and below lease_secs, got {margin!r}"
            )
        if renew * 2 > lease_secs - margin:
            raise InvalidParameterError(
                f"renew_interval_secs ({renew} s) must be at most half of lease_secs minus "
                f"margin_secs ({lease_secs} - {margin} s), so one late renewal does not "
                "end leadership"
            )
        self._connection = connection
        self._name = name
        self._lease_secs = float(lease_secs)
        self._renew_secs = float(renew)
        self._margin_secs = float(margin)
        self._clock = clock
        self._holder = uuid.uuid4()
        leases = q.param_ident(schema, "watchdog_leases")
        self._take_sql = sql.SQL(q.TAKE_LEASE.strip()).format(leases=leases).as_string(None)
        self._release_sql = sql.SQL(q.RELEASE_LEASE).format(leases=leases).as_string(None)
        self._valid_until: float | None = None
        # Whether the row may be this instance's (a take was sent and not refused since).
        self._may_hold = False
        self._lock = asyncio.Lock()
        self._renewal: asyncio.Task[None] | None = None

    @property
    def holder(self) -> uuid.UUID:
        """This instance's id in the ``holder`` column."""
        return self._holder

    @property
    def name(self) -> str:
        return self._name

    @property
    def lease_secs(self) -> float:
        return self._lease_secs

    @property
    def renew_interval_secs(self) -> float:
        return self._renew_secs

    @property
    def margin_secs(self) -> float:
        return self._margin_secs

    @property
    def is_leader(self) -> bool:
        """Whether this instance leads now: its last take or renewal succeeded and its
        local validity (``sent + lease - margin``) has not run out."""
        until = self._valid_until
        return until is not None and self._clock() < until

    async def acquire(self) -> bool:
        if await self._take():
            if self._renewal is None or self._renewal.done():
                self._renewal = asyncio.create_task(
                    self._renew_loop(), name=f"turnstore-lease-{self._name}"
                )
            return True
        await self._stop_renewing()
        return False

    async def release(self) -> None:
        await self._stop_renewing()
        self._valid_until = None
        if not self._may_hold:
            return
        self._may_hold = False
        try:
            await self._bounded(self._release_sql, (self._name, self._holder))
        except (psycopg.Error, TurnStoreError, _NoAnswer) as exc:
            # The lease then lapses on its own at expires_at.
            logger.warning("watchdog lease %r not released (%s); it expires", self._name, exc)

    async def _take(self) -> bool:
        """Take or renew the lease once; whether this instance leads afterwards."""
        async with self._lock:
            was_leader = self.is_leader
            sent = self._clock()
            self._may_hold = True
            try:
                row = await self._bounded(
                    self._take_sql, (self._name, self._holder, self._lease_secs)
                )
            except (psycopg.Error, TurnStoreError, _NoAnswer) as exc:
                self._valid_until = None
                logger.warning("watchdog lease %r not taken or renewed: %s", self._name, exc)
                return False
            if row is None:
                self._valid_until = None
                self._may_hold = False
                if was_leader:
                    logger.warning("watchdog lease %r held by another instance", self._name)
                return False
            self._valid_until = sent + self._lease_secs - self._margin_secs
            if not was_leader:
                logger.info("watchdog became leader (lease %r, %s)", self._name, self._holder)
            return True

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self._renew_secs)
            if not await self._take():
                return

    async def _stop_renewing(self) -> None:
        task, self._renewal = self._renewal, None
        if task is not None and task is not asyncio.current_task():
            await cancel_until_done(task)

    async def _bounded(self, query: str, params: tuple[Any, ...]) -> object:
        """The first row's first value of ``query`` (None without a row), within
        ``renew_interval_secs``; ``_NoAnswer`` when it takes longer."""

        async def run() -> object:
            async with self._connection() as conn:
                with driver_errors:
                    cur = await conn.execute(query, params)
                    row = await cur.fetchone() if cur.description is not None else None
            return None if row is None else row[0]

        task = asyncio.ensure_future(run())
        try:
            done, _ = await asyncio.wait({task}, timeout=self._renew_secs)
        finally:
            if not task.done():  # timed out, or the caller was cancelled
                await cancel_until_done(task)
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved: the abandoned statement's outcome
        if not done:
            raise _NoAnswer(f"no answer within {self._renew_secs} s")
        return task.result()
