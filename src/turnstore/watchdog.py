"""The orphan watchdog: fails turns whose process died mid-stream (spec section 8).

A turn is an orphan when it still runs but its ``last_progress_at`` is older than the
timeout: the process streaming it crashed, or lost its database. ``OrphanWatchdog`` scans
for candidates, then finalizes each one with ``cas_finalize_orphan`` in its own transaction,
which re-checks every orphan predicate, so a turn whose keep-alive renewed its progress
after the scan is left alone. The host's settlement hook (refund a quota reservation, emit
an outbox event) runs in that transaction, only when the CAS was won.

One watchdog per database scans at a time: on PostgreSQL the leader holds a session-level
advisory lock on a dedicated connection (not from the pool, so the lock lives exactly as
long as that session); on the in-memory fake an in-process lock per store plays the part.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Protocol
from uuid import UUID

import psycopg
from psycopg.conninfo import conninfo_to_dict

from turnstore.errors import InvalidParameterError
from turnstore.model import Turn
from turnstore.repository import RunnerT, TurnStore
from turnstore.scope import AccessScope
from turnstore.settings import (
    DEFAULT_ORPHAN_TIMEOUT_SECS,
    MAX_ORPHAN_TIMEOUT_SECS,
    MIN_ORPHAN_TIMEOUT_SECS,
    OrphanTimeoutSecs,
    WatchdogSettings,
)

__all__ = [
    "DEFAULT_LEADER_CHECK_TIMEOUT_SECS",
    "DEFAULT_ORPHAN_TIMEOUT_SECS",
    "LEADER_CONNECTION_DEFAULTS",
    "MAX_ORPHAN_TIMEOUT_SECS",
    "MIN_ORPHAN_TIMEOUT_SECS",
    "AdvisoryLockElection",
    "InProcessElection",
    "LeaderElection",
    "OrphanTimeoutSecs",
    "OrphanWatchdog",
    "SettlementHook",
    "SweepReport",
    "WatchdogMetrics",
    "WatchdogSettings",
    "advisory_lock_key",
    "leader_connection_kwargs",
]

logger = logging.getLogger("turnstore.watchdog")

#: The ``application_name`` of the leader's dedicated connection, to spot it in
#: ``pg_stat_activity``.
_APPLICATION_NAME = "turnstore-watchdog"

#: Bounds given to the leader's dedicated connection unless its conninfo (or, for the
#: connect timeout, ``PGCONNECT_TIMEOUT``) already sets them: a server that vanishes
#: without closing the socket is noticed by TCP keepalives instead of never.
LEADER_CONNECTION_DEFAULTS: dict[str, int] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}

#: Seconds the leader waits for its session to answer a query (the liveness check before
#: each scan, the lock attempt, the unlock) before it treats the session as lost.
DEFAULT_LEADER_CHECK_TIMEOUT_SECS = 10.0

#: The host's settlement hook: runs in the orphan's finalizing transaction, after the CAS
#: was won, with the turn as the CAS left it (``failed``, ``orphan_timeout``).
SettlementHook = Callable[[RunnerT, Turn], Awaitable[None]]


@dataclass(frozen=True)
class SweepReport:
    """What one scan did.

    ``leader`` is False when another instance holds leadership: nothing was scanned.
    ``detected`` are the candidates the scan found; ``finalized`` the turns this sweep
    failed (as the CAS left them); a candidate in neither ``finalized`` nor
    ``settlement_errors`` was renewed or finalized by someone else in between.
    ``settlement_errors`` are the ids whose settlement hook (or transaction) raised: their
    transition was rolled back and the next scan will try again.
    """

    leader: bool
    detected: tuple[Turn, ...] = ()
    finalized: tuple[Turn, ...] = ()
    settlement_errors: tuple[UUID, ...] = ()
    duration_secs: float = 0.0


class WatchdogMetrics:
    """Hooks for the host's metrics; override what you need. They must not block."""

    def orphan_detected(self, turn: Turn) -> None:
        """A scan found ``turn`` as an orphan candidate."""

    def orphan_finalized(self, turn: Turn) -> None:
        """This watchdog failed ``turn`` (its settlement hook, if any, succeeded)."""

    def scan_duration(self, seconds: float) -> None:
        """A scan (search and finalization) took ``seconds``."""


# --------------------------------------------------------------------------- election


class LeaderElection(Protocol):
    """Decides which watchdog instance may scan."""

    @property
    def is_leader(self) -> bool:
        """Whether this instance held leadership at its last check."""
        ...

    async def acquire(self) -> bool:
        """Become the leader, or confirm still being it; False if another instance is."""
        ...

    async def release(self) -> None:
        """Give leadership up (idempotent)."""
        ...


def advisory_lock_key(schema: str) -> int:
    """The advisory lock key of the watchdog of one schema: a stable signed 64-bit hash,
    so two schemas in one database elect their watchdogs independently."""
    digest = hashlib.blake2b(f"turnstore.watchdog:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


ConnectionFactory = Callable[[], Awaitable["psycopg.AsyncConnection[Any]"]]


def leader_connection_kwargs(conninfo: str, kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Keyword arguments for ``psycopg.AsyncConnection.connect(conninfo, **result)`` that
    open the leader's dedicated connection: ``kwargs`` plus autocommit, the watchdog's
    ``application_name`` and every ``LEADER_CONNECTION_DEFAULTS`` entry that neither
    ``conninfo`` nor ``kwargs`` sets."""
    given = set(conninfo_to_dict(conninfo)) | set(kwargs or {})
    if os.environ.get("PGCONNECT_TIMEOUT"):
        given.add("connect_timeout")
    result: dict[str, Any] = {k: v for k, v in LEADER_CONNECTION_DEFAULTS.items() if k not in given}
    result.update(kwargs or {})
    result.update(autocommit=True, application_name=_APPLICATION_NAME)
    return result


class _NoAnswer(Exception):
    """The leader's session did not answer in time; its connection has been closed."""


class AdvisoryLockElection:
    """Leadership = a session-level ``pg_try_advisory_lock`` held on a dedicated connection.

    The lock lives exactly as long as that session: if the connection dies (network, crash,
    ``pg_terminate_backend``), the server releases it, the next ``acquire`` here notices the
    dead connection and reports lost leadership, and another instance wins at its next try.
    Every query on that session is bounded by ``check_timeout_secs``: a session that does
    not answer in time is closed and counts as lost, so neither a scan nor ``stop()`` waits
    on a server that vanished silently.
    """

    def __init__(
        self,
        connect: ConnectionFactory,
        key: int,
        *,
        check_timeout_secs: float = DEFAULT_LEADER_CHECK_TIMEOUT_SECS,
    ) -> None:
        if not check_timeout_secs > 0:
            raise InvalidParameterError(
                f"check_timeout_secs must be positive, got {check_timeout_secs!r}"
            )
        self._connect = connect
        self._key = key
        self._check_timeout_secs = check_timeout_secs
        self._conn: psycopg.AsyncConnection[Any] | None = None

    @classmethod
    def from_dsn(
        cls,
        dsn: str,
        key: int,
        *,
        check_timeout_secs: float = DEFAULT_LEADER_CHECK_TIMEOUT_SECS,
    ) -> AdvisoryLockElection:
        """An election over connections opened from ``dsn`` (see
        ``leader_connection_kwargs`` for the options added to it)."""
        kwargs = leader_connection_kwargs(dsn)

        async def connect() -> psycopg.AsyncConnection[Any]:
            return await psycopg.AsyncConnection.connect(dsn, **kwargs)

        return cls(connect, key, check_timeout_secs=check_timeout_secs)

    @property
    def key(self) -> int:
        return self._key

    @property
    def is_leader(self) -> bool:
        return self._conn is not None

    async def acquire(self) -> bool:
        held = self._conn
        if held is not None:
            alive = False
            try:
                await self._ask(held, "SELECT 1")
                alive = True
            except (psycopg.Error, _NoAnswer) as exc:
                logger.warning("watchdog leader connection lost (%s); leadership given up", exc)
            finally:
                if not alive:  # also when this task is cancelled mid-check
                    await self._discard()
            if alive:
                return True
        try:
            conn = await self._connect()
        except psycopg.Error as exc:
            logger.warning("watchdog cannot connect to elect a leader: %s", exc)
            return False
        try:
            won = await self._ask(conn, "SELECT pg_try_advisory_lock(%s)", (self._key,))
            if won is True:
                self._conn = conn
        except (psycopg.Error, _NoAnswer) as exc:
            logger.warning("watchdog leader election failed: %s", exc)
        finally:
            # A connection not stored, for whatever reason (lost race, error, cancellation
            # after the server granted the lock), is closed: it may hold the lock.
            if self._conn is not conn:
                await conn.close()
        if self._conn is not conn:
            return False
        logger.info("watchdog became leader (advisory lock %s)", self._key)
        return True

    async def release(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            # A dead session has released the lock; closing ends it either way.
            with contextlib.suppress(psycopg.Error, _NoAnswer):
                await self._ask(conn, "SELECT pg_advisory_unlock(%s)", (self._key,))
        finally:
            await self._discard()

    async def _ask(
        self, conn: psycopg.AsyncConnection[Any], query: str, params: tuple[Any, ...] = ()
    ) -> object:
        """The first value ``query`` returns on ``conn``, within ``check_timeout_secs``.

        On a timeout (or this task's cancellation) the connection is closed before the
        query is abandoned, so psycopg does not wait again on a session that is not
        answering, and a lock the server may have granted meanwhile is released with it.
        """

        async def run() -> object:
            cur = await conn.execute(query, params)
            row = await cur.fetchone()
            return None if row is None else row[0]

        task = asyncio.ensure_future(run())
        timed_out = False
        try:
            done, _ = await asyncio.wait({task}, timeout=self._check_timeout_secs)
            timed_out = not done
        finally:
            if not task.done():  # timed out, or this task was cancelled while waiting
                await conn.close()
                task.cancel()
                await asyncio.wait({task})
                if not task.cancelled():
                    task.exception()  # the closed connection is all it can report
        if timed_out:
            raise _NoAnswer(f"no answer within {self._check_timeout_secs} s")
        return task.result()

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


_IN_PROCESS_LEADERS: weakref.WeakKeyDictionary[object, InProcessElection] = (
    weakref.WeakKeyDictionary()
)


class InProcessElection:
    """Leadership among the watchdogs of one process sharing one store (the fake's)."""

    def __init__(self, store: object) -> None:
        self._store = weakref.ref(store)

    @property
    def is_leader(self) -> bool:
        store = self._store()
        return store is not None and _IN_PROCESS_LEADERS.get(store) is self

    async def acquire(self) -> bool:
        store = self._store()
        if store is None:
            return False
        holder = _IN_PROCESS_LEADERS.setdefault(store, self)
        return holder is self

    async def release(self) -> None:
        store = self._store()
        if store is not None and _IN_PROCESS_LEADERS.get(store) is self:
            del _IN_PROCESS_LEADERS[store]


def default_election(store: TurnStore[Any]) -> LeaderElection:
    """Advisory lock for a store that knows its DSN; the in-process lock for the fake."""
    from turnstore.memory import InMemoryStore

    if isinstance(store, InMemoryStore):
        return InProcessElection(store)
    key = advisory_lock_key(str(getattr(store, "schema", "turnstore")))
    dsn = getattr(store, "dsn", None)
    if isinstance(dsn, str) and dsn:
        return AdvisoryLockElection.from_dsn(dsn, key)
    # A store wrapping the host's pool: open the dedicated connection the way the pool does.
    pool = getattr(store, "pool", None)
    conninfo = getattr(pool, "conninfo", None)
    if isinstance(conninfo, str):
        kwargs = leader_connection_kwargs(conninfo, dict(getattr(pool, "kwargs", None) or {}))

        async def connect() -> psycopg.AsyncConnection[Any]:
            return await psycopg.AsyncConnection.connect(conninfo, **kwargs)

        return AdvisoryLockElection(connect, key)
    raise InvalidParameterError(
        "cannot elect a watchdog leader for this store: it has no DSN to open a dedicated "
        "connection; pass election=AdvisoryLockElection(connect, advisory_lock_key(schema))"
    )


# --------------------------------------------------------------------------- watchdog


class OrphanWatchdog(Generic[RunnerT]):
    """Finds orphaned turns and fails them with ``orphan_timeout``, once, as the leader.

    ``await run_once()`` runs one scan (the CLI's ``turnstore sweep --once``);
    ``start()``/``stop()`` or ``async with`` run the loop every ``scan_interval_secs``.
    """

    def __init__(
        self,
        store: TurnStore[RunnerT],
        settings: WatchdogSettings | None = None,
        *,
        settlement_hook: SettlementHook[RunnerT] | None = None,
        metrics: WatchdogMetrics | None = None,
        election: LeaderElection | None = None,
    ) -> None:
        self._store = store
        self._settings = settings if settings is not None else WatchdogSettings()
        self._hook = settlement_hook
        self._metrics = metrics if metrics is not None else WatchdogMetrics()
        self._election = election if election is not None else default_election(store)
        self._sweep_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def settings(self) -> WatchdogSettings:
        return self._settings

    @property
    def is_leader(self) -> bool:
        return self._election.is_leader

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def elect(self) -> bool:
        """Become or confirm being the leader; False while another instance leads."""
        return await self._election.acquire()

    async def run_once(self) -> SweepReport:
        """One scan, if this instance is or can become the leader.

        Outside the running loop, leadership taken for this scan is released after it, so a
        one-off sweep (the CLI) leaves nothing behind.
        """
        held = self._election.is_leader
        if not await self._election.acquire():
            return SweepReport(leader=False)
        try:
            async with self._sweep_lock:
                return await self._sweep()
        finally:
            if not held and not self.running:
                await self._election.release()

    async def _sweep(self) -> SweepReport:
        settings = self._settings
        timeout = settings.orphan_timeout_secs
        turns = self._store.turns
        started = time.perf_counter()
        async with self._store.connection() as runner:
            candidates = await turns.find_orphan_candidates(runner, timeout, settings.batch_limit)
        for turn in candidates:
            logger.info("orphan candidate: turn %s of chat %s", turn.id, turn.chat_id)
            self._notify(self._metrics.orphan_detected, turn)
        finalized: list[Turn] = []
        errors: list[UUID] = []
        for candidate in candidates:
            try:
                final = await self._finalize(candidate)
            except Exception:
                logger.exception("finalizing orphan turn %s failed; rolled back", candidate.id)
                errors.append(candidate.id)
                continue
            if final is None:
                logger.info("turn %s is no longer an orphan; left alone", candidate.id)
                continue
            logger.info("orphan turn %s failed with orphan_timeout", final.id)
            finalized.append(final)
            self._notify(self._metrics.orphan_finalized, final)
        duration = time.perf_counter() - started
        self._notify(self._metrics.scan_duration, duration)
        return SweepReport(
            leader=True,
            detected=tuple(candidates),
            finalized=tuple(finalized),
            settlement_errors=tuple(errors),
            duration_secs=duration,
        )

    @staticmethod
    def _notify(hook: Callable[[Any], None], value: object) -> None:
        """Call a metrics hook; a hook that raises is logged and never stops the sweep."""
        try:
            hook(value)
        except Exception:
            logger.exception("watchdog metrics hook %s raised; ignored", hook.__name__)

    async def _finalize(self, candidate: Turn) -> Turn | None:
        """CAS one candidate and settle it in one transaction; the row if this call won."""
        turns = self._store.turns
        async with self._store.transaction() as runner:
            won = await turns.cas_finalize_orphan(
                runner, candidate.id, self._settings.orphan_timeout_secs
            )
            if won != 1:
                return None
            final = await turns.find_by_chat_and_request_id(
                runner, AccessScope.allow_all(), candidate.chat_id, candidate.request_id
            )
            assert final is not None, "the CAS just updated this row"
            if self._hook is not None:
                await self._hook(runner, final)
            return final

    # ---- the loop

    async def start(self) -> None:
        """Run the scan loop in a background task (no-op if it already runs)."""
        if self.running:
            return
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="turnstore-orphan-watchdog")

    async def stop(self) -> None:
        """Stop the loop after the current scan and give leadership up.

        If ``stop()`` itself is cancelled while the scan is still running, the loop is
        cancelled too; either way no task and no leader connection is left behind.
        """
        task, self._task = self._task, None
        self._stopping.set()
        try:
            if task is not None:
                await asyncio.wait({task})
        finally:
            if task is not None:
                if not task.done():
                    task.cancel()
                    await asyncio.wait({task})
                if not task.cancelled() and task.exception() is not None:
                    logger.error("orphan watchdog loop failed", exc_info=task.exception())
            await self._election.release()

    async def __aenter__(self) -> OrphanWatchdog[RunnerT]:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                if await self.elect() and not self._stopping.is_set():
                    async with self._sweep_lock:
                        await self._sweep()
            except Exception:
                logger.exception("orphan scan failed; retrying at the next interval")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    self._stopping.wait(), timeout=self._settings.scan_interval_secs
                )
