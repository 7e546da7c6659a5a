# WARNING: this file is generated from src/turnstore/postgres/election.py by tools/async_to_sync.py; do not edit.
"""The watchdog's leader election on PostgreSQL: a session-level advisory lock.

The leader holds ``pg_try_advisory_lock(advisory_lock_key(schema))`` on a dedicated
connection (not from the pool, so the lock lives exactly as long as that session), opened
with a connect timeout and TCP keepalives (``LEADER_CONNECTION_DEFAULTS``) so a server that
vanishes silently is noticed, and every query on it bounded by ``check_timeout_secs``.
``PostgresStore.leader_election()`` builds one from the store's DSN or pool.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import psycopg

from turnstore._compat_sync import spawn, wait_tasks
from turnstore.errors import InvalidParameterError
from turnstore.postgres.election import (
    DEFAULT_LEADER_CHECK_TIMEOUT_SECS,
    LEADER_CONNECTION_DEFAULTS,
    _NoAnswer,
    advisory_lock_key,
    leader_connection_kwargs,
)

__all__ = [
    "DEFAULT_LEADER_CHECK_TIMEOUT_SECS",
    "LEADER_CONNECTION_DEFAULTS",
    "AdvisoryLockElection",
    "ConnectionFactory",
    "advisory_lock_key",
    "leader_connection_kwargs",
]
logger = logging.getLogger("turnstore.watchdog")
ConnectionFactory = Callable[[], "psycopg.Connection[Any]"]


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
        self._conn: psycopg.Connection[Any] | None = None

    @classmethod
    def from_dsn(
        cls, dsn: str, key: int, *, check_timeout_secs: float = DEFAULT_LEADER_CHECK_TIMEOUT_SECS
    ) -> AdvisoryLockElection:
        """An election over connections opened from ``dsn`` (see
        ``leader_connection_kwargs`` for the options added to it)."""
        kwargs = leader_connection_kwargs(dsn)

        def connect() -> psycopg.Connection[Any]:
            return psycopg.Connection.connect(dsn, **kwargs)

        return cls(connect, key, check_timeout_secs=check_timeout_secs)

    @property
    def key(self) -> int:
        return self._key

    @property
    def is_leader(self) -> bool:
        return self._conn is not None

    def acquire(self) -> bool:
        held = self._conn
        if held is not None:
            alive = False
            try:
                self._ask(held, "SELECT 1")
                alive = True
            except (psycopg.Error, _NoAnswer) as exc:
                logger.warning("watchdog leader connection lost (%s); leadership given up", exc)
            finally:
                if not alive:
                    self._discard()
            if alive:
                return True
        try:
            conn = self._connect()
        except psycopg.Error as exc:
            logger.warning("watchdog cannot connect to elect a leader: %s", exc)
            return False
        try:
            won = self._ask(conn, "SELECT pg_try_advisory_lock(%s)", (self._key,))
            if won is True:
                self._conn = conn
        except (psycopg.Error, _NoAnswer) as exc:
            logger.warning("watchdog leader election failed: %s", exc)
        finally:
            if self._conn is not conn:
                conn.close()
        if self._conn is not conn:
            return False
        logger.info("watchdog became leader (advisory lock %s)", self._key)
        return True

    def release(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            with contextlib.suppress(psycopg.Error, _NoAnswer):
                self._ask(conn, "SELECT pg_advisory_unlock(%s)", (self._key,))
        finally:
            self._discard()

    def _ask(
        self, conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...] = ()
    ) -> object:
        """The first value ``query`` returns on ``conn``, within ``check_timeout_secs``.

        On a timeout (or this task's cancellation) the connection is closed before the
        query is abandoned, so psycopg does not wait again on a session that is not
        answering, and a lock the server may have granted meanwhile is released with it.
        """

        def run() -> object:
            cur = conn.execute(query, params)
            row = cur.fetchone()
            return None if row is None else row[0]

        task = spawn(run)
        timed_out = False
        try:
            timed_out = not wait_tasks([task], self._check_timeout_secs)
        finally:
            if not task.done():
                conn.close()
                task.cancel()
                wait_tasks([task])
                if not task.cancelled():
                    task.exception()
        if timed_out:
            raise _NoAnswer(f"no answer within {self._check_timeout_secs} s")
        return task.result()

    def _discard(self) -> None:
        conn, self._conn = (self._conn, None)
        if conn is not None:
            conn.close()
