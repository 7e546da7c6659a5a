"""The watchdog's leader election on PostgreSQL: a session-level advisory lock.

The leader holds ``pg_try_advisory_lock(advisory_lock_key(schema))`` on a dedicated
connection (not from the pool, so the lock lives exactly as long as that session), opened
with a connect timeout and TCP keepalives (``LEADER_CONNECTION_DEFAULTS``) so a server that
vanishes silently is noticed, and every query on it bounded by ``check_timeout_secs``.
``PostgresStore.leader_election()`` builds one from the store's DSN or pool.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from turnstore._compat_async import spawn, wait_tasks
from turnstore.errors import InvalidParameterError
from turnstore.validation import check_schema_name

__all__ = [
    "DEFAULT_LEADER_CHECK_TIMEOUT_SECS",
    "LEADER_CONNECTION_DEFAULTS",
    "AdvisoryLockElection",
    "ConnectionFactory",
    "advisory_lock_key",
    "leader_connection_kwargs",
]

# The watchdog's logger: leadership is part of the watchdog's story in the host's logs.
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


def advisory_lock_key(schema: str) -> int:
    """The advisory lock key of the watchdog of one schema: a stable signed 64-bit hash,
    so two schemas in one database elect their watchdogs independently."""
    check_schema_name(schema)
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

        task = spawn(run)
        timed_out = False
        try:
            timed_out = not await wait_tasks([task], self._check_timeout_secs)
        finally:
            if not task.done():  # timed out, or this task was cancelled while waiting
                await conn.close()
                task.cancel()
                await wait_tasks([task])
                if not task.cancelled():
                    task.exception()  # the closed connection is all it can report
        if timed_out:
            raise _NoAnswer(f"no answer within {self._check_timeout_secs} s")
        return task.result()

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
