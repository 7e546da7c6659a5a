# WARNING: this file is generated from src/turnstore/postgres/checkout.py by tools/async_to_sync.py; do not edit.
"""Taking connections out of a pool and giving them back (docs/deploying.md, *Restarts and
failover*).

Every connection ``PostgresStore`` hands out goes through ``checkout``:

- **Dead connections are not handed out.** After a server restart, a crash or a failover,
  every pooled connection is dead, but a pool learns it only when a call fails on one. Here a
  connection is first checked without a round trip: a live idle connection has nothing to
  read, while one whose server went away has the server's goodbye (or end of file) waiting
  on its socket. Only such a connection gets a real check (an empty statement); a failed one
  is closed and given back (the pool then opens a replacement at once) and the next one is
  taken, at most ``max_size + 1`` times, so the first call after the server is back
  succeeds instead of the first ``max_size`` calls failing.
- **A pool timeout says whose fault it is.** The connections a task holds are noted
  (``held_by_current``); a pool timeout while the calling task itself holds a connection of
  the same pool is ``PoolDeadlockError`` (waiting for itself: pass that connection as the
  runner), any other ``PoolTimeoutError``.
"""

from __future__ import annotations

import select
from contextlib import AbstractContextManager
from contextvars import ContextVar
from types import TracebackType
from typing import Any

import psycopg
import psycopg_pool
from psycopg.pq import TransactionStatus

from turnstore._compat_sync import current_owner
from turnstore.errors import PoolDeadlockError
from turnstore.postgres.errors import driver_errors, raise_translated

__all__ = [
    "AutocommitConnection",
    "checkout",
    "give_back",
    "held_by_current",
    "holding",
    "looks_alive",
]
Connection = psycopg.Connection[Any]
Pool = psycopg_pool.ConnectionPool[Any]
pool_check = psycopg_pool.ConnectionPool.check_connection
_HELD: ContextVar[tuple[tuple[int, object], ...]] = ContextVar("turnstore_held", default=())


def looks_alive(conn: Connection) -> bool:
    """Whether an idle pooled connection can be used without a round trip to find out.

    An idle connection has nothing to read; one whose server shut down, crashed or was
    failed over has the server's last message or end of file waiting on its socket.
    """
    if conn.closed or conn.broken or conn.info.transaction_status != TransactionStatus.IDLE:
        return False
    try:
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.OperationalError):
        return False
    return not readable


def _usable(conn: Connection) -> bool:
    """``looks_alive``, or else a real check: an empty statement (a pending notification or
    parameter report also makes a live socket readable)."""
    if looks_alive(conn):
        return True
    if conn.closed or conn.broken:
        return False
    try:
        pool_check(conn)
    except psycopg.Error:
        return False
    return conn.info.transaction_status == TransactionStatus.IDLE


def held_by_current(pool: Pool) -> bool:
    """Whether the calling task (thread, for the sync API) holds a connection of ``pool``."""
    key = (id(pool), current_owner())
    return key in _HELD.get()


class holding:
    """``with holding(pool):`` notes, for the calling task, that it holds a connection of
    ``pool`` until the block ends."""

    __slots__ = ("_key", "_token")

    def __init__(self, pool: Pool) -> None:
        self._key = (id(pool), current_owner())

    def __enter__(self) -> None:
        self._token = _HELD.set((*_HELD.get(), self._key))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            _HELD.reset(self._token)
        except ValueError:
            held = list(_HELD.get())
            if self._key in held:
                held.remove(self._key)
            _HELD.set(tuple(held))


def give_back(pool: Pool, conn: Connection) -> None:
    """Return ``conn`` to ``pool``, even if the caller is cancelled meanwhile.

    ``putconn`` awaits (a rollback, the pool's lock); a cancellation landing there (a
    task cancelled twice: once in its body, again while it cleans up) would lose the
    connection for good. Shielded, the return finishes in the background.
    """
    pool.putconn(conn)


def _getconn(pool: Pool) -> Connection:
    try:
        conn: Connection = pool.getconn()
    except psycopg_pool.PoolTimeout as exc:
        if held_by_current(pool):
            raise PoolDeadlockError(
                "no pooled connection became free in time, and the calling task holds one of this pool itself: a call inside store.transaction() must pass that transaction's connection (runner=conn), or it waits for itself"
            ) from exc
        raise_translated(exc)
        raise
    except Exception as exc:
        raise_translated(exc)
        raise
    return conn


def checkout(pool: Pool, *, check: bool) -> Connection:
    """A connection from ``pool``; with ``check``, never one found dead (see the module
    docstring). Driver and pool errors come out typed."""
    if check:
        for _ in range(pool.max_size + 1):
            conn = _getconn(pool)
            try:
                usable = _usable(conn)
            except BaseException:
                give_back(pool, conn)
                raise
            if usable:
                return conn
            conn.close()
            give_back(pool, conn)
    return _getconn(pool)


class AutocommitConnection(AbstractContextManager[Connection]):
    """``PostgresStore.connection()``: a pooled connection in autocommit for one block.

    A class rather than an ``@contextmanager`` generator: every keep-alive write and
    every single-statement call goes through it, and a plain object costs a few
    microseconds less per use.
    """

    __slots__ = ("_check", "_conn", "_holding", "_pool", "_switched")

    def __init__(self, pool: Pool, *, check: bool = True) -> None:
        self._pool = pool
        self._check = check
        self._switched = False

    def __enter__(self) -> Connection:
        pool = self._pool
        conn = checkout(pool, check=self._check)
        if not conn.autocommit:
            try:
                with driver_errors:
                    conn.set_autocommit(True)
            except BaseException:
                give_back(pool, conn)
                raise
            self._switched = True
        self._conn = conn
        self._holding = holding(pool)
        self._holding.__enter__()
        return conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        self._holding.__exit__(None, None, None)
        try:
            if self._switched and (not conn.closed):
                with driver_errors:
                    conn.set_autocommit(False)
        finally:
            give_back(self._pool, conn)
