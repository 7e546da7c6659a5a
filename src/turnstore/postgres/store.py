"""``PostgresStore``: a ``TurnStore`` over a psycopg-pool ``AsyncConnectionPool``.

It hands out pooled connections in autocommit or inside a transaction, runs the schema's
migrations and checks, and builds the watchdog's leader election (a lease row taken through
the store's own connections; or, on request, an advisory lock held on a dedicated connection
opened the way the store's own connections are).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any

import psycopg
import psycopg_pool

from turnstore.errors import InvalidParameterError
from turnstore.postgres.election import (
    AdvisoryLockElection,
    advisory_lock_key,
    leader_connection_kwargs,
)
from turnstore.postgres.errors import driver_errors, raise_translated
from turnstore.postgres.lease import LeaseElection
from turnstore.postgres.migrations import SchemaStatus, check_schema, migrate
from turnstore.postgres.repository import PostgresTurnRepository
from turnstore.postgres.statements import DEFAULT_SCHEMA

__all__ = ["PostgresStore"]

Connection = psycopg.AsyncConnection[Any]
Pool = psycopg_pool.AsyncConnectionPool[Any]


async def _give_back(pool: Pool, conn: Connection) -> None:
    """Return ``conn`` to ``pool``, even if the caller is cancelled meanwhile.

    ``putconn`` awaits (a rollback, the pool's lock); a cancellation landing there (a
    task cancelled twice: once in its body, again while it cleans up) would lose the
    connection for good. Shielded, the return finishes in the background.
    """
    await asyncio.shield(pool.putconn(conn))


class _AutocommitConnection(AbstractAsyncContextManager[Connection]):
    """``PostgresStore.connection()``: a pooled connection in autocommit for one block.

    A class rather than an ``@asynccontextmanager`` generator: every keep-alive write and
    every single-statement call goes through it, and a plain object costs a few
    microseconds less per use.
    """

    __slots__ = ("_conn", "_pool", "_switched")

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._switched = False

    async def __aenter__(self) -> Connection:
        pool = self._pool
        try:
            conn: Connection = await pool.getconn()
        except Exception as exc:
            raise_translated(exc)
            raise
        if not conn.autocommit:
            # A host pool's connection: switched for the block, switched back on exit.
            try:
                with driver_errors:
                    await conn.set_autocommit(True)
            except BaseException:
                await _give_back(pool, conn)
                raise
            self._switched = True
        self._conn = conn
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        try:
            if self._switched and not conn.closed:
                with driver_errors:
                    await conn.set_autocommit(False)
        finally:
            await _give_back(self._pool, conn)


class PostgresStore:
    """A ``TurnStore`` over a psycopg-pool ``AsyncConnectionPool``.

    ``await PostgresStore.open(dsn)`` creates and owns a pool of autocommit connections;
    ``PostgresStore(pool=host_pool)`` wraps a pool the host owns (``close`` then leaves it
    open). ``connection()`` hands out a connection in autocommit (each call atomic on its
    own); ``transaction()`` one inside a transaction, committed on clean exit.
    """

    def __init__(
        self,
        pool: Pool,
        *,
        schema: str = DEFAULT_SCHEMA,
        dsn: str | None = None,
        owns_pool: bool = False,
    ) -> None:
        self._pool = pool
        self._dsn = dsn
        self._owns_pool = owns_pool
        self._turns = PostgresTurnRepository(schema)

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 30.0,
        verify_schema: bool = False,
    ) -> PostgresStore:
        """Open a pool of ``min_size..max_size`` autocommit connections to ``dsn``.

        Waits up to ``timeout`` seconds for the first ``min_size`` connections, and uses the
        same timeout when a call waits for a free connection; ``StoreUnavailableError`` when
        the server cannot be reached in that time. With ``verify_schema`` it also runs
        ``verify_schema()`` once, so an app that does not migrate itself fails at start
        instead of on its first call; on failure the pool is closed before the error
        propagates.
        """
        repository = PostgresTurnRepository(schema)
        pool: Pool = psycopg_pool.AsyncConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            kwargs={"autocommit": True},
            open=False,
            name=f"turnstore:{schema}",
        )
        try:
            with driver_errors:
                await pool.open(wait=True, timeout=timeout)
            store = cls(pool, schema=repository.schema, dsn=dsn, owns_pool=True)
            if verify_schema:
                await store.verify_schema()
        except BaseException:
            await pool.close()
            raise
        return store

    @property
    def turns(self) -> PostgresTurnRepository:
        return self._turns

    @property
    def schema(self) -> str:
        return self._turns.schema

    @property
    def pool(self) -> Pool:
        return self._pool

    @property
    def dsn(self) -> str | None:
        """The DSN the store opened, or ``None`` when it wraps a host's pool."""
        return self._dsn

    async def _acquire(self) -> Connection:
        with driver_errors:
            conn: Connection = await self._pool.getconn()
        return conn

    def connection(self) -> AbstractAsyncContextManager[Connection]:
        """A pooled connection in autocommit (a host pool's connection is switched to
        autocommit for the duration and switched back)."""
        return _AutocommitConnection(self._pool)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A pooled connection inside a transaction: committed when the block ends
        normally, rolled back when it raises."""
        conn = await self._acquire()
        try:
            with driver_errors:
                async with conn.transaction():
                    yield conn
        finally:
            await _give_back(self._pool, conn)

    async def migrate(self) -> None:
        """Apply pending migrations to this store's schema (see ``migrate``)."""
        async with self.connection() as conn:
            await migrate(conn, schema=self.schema)

    async def check_schema(self) -> SchemaStatus:
        """Whether this store's schema is current (see ``check_schema``)."""
        async with self.connection() as conn:
            return await check_schema(conn, schema=self.schema)

    async def verify_schema(self) -> SchemaStatus:
        """``check_schema``, raising ``SchemaMismatchError`` (naming the pending, changed
        and unknown versions) unless the schema is current; for hosts that migrate in a
        separate deployment step and must not run against another schema version."""
        status = await self.check_schema()
        status.require_current(self.schema)
        return status

    def leader_election(self) -> LeaseElection:
        """A new lease election for this schema's watchdog (``LeaseElection``, default
        timings): a row of ``watchdog_leases`` taken and renewed through this store's own
        connections, so it holds behind a transaction-pooling PgBouncer as well."""
        return LeaseElection(self.connection, self.schema)

    def advisory_lock_election(self) -> AdvisoryLockElection:
        """A new advisory-lock election for this schema's watchdog (``advisory_lock_key``).

        Session-bound: leadership is a lock of one server session, so use it only over
        direct connections, never through a transaction-pooling pooler. Its dedicated
        connection is opened from the store's DSN, or, for a host's pool, from
        the pool's conninfo and connection kwargs (see ``leader_connection_kwargs``). A pool
        whose conninfo or kwargs are callables gives nothing to open it from: then
        ``InvalidParameterError``, and the host passes its own election to the watchdog.
        """
        key = advisory_lock_key(self.schema)
        if self._dsn:
            return AdvisoryLockElection.from_dsn(self._dsn, key)
        conninfo = self._pool.conninfo
        pool_kwargs = self._pool.kwargs
        if isinstance(conninfo, str) and (pool_kwargs is None or isinstance(pool_kwargs, dict)):
            kwargs = leader_connection_kwargs(conninfo, dict(pool_kwargs or {}))

            async def connect() -> psycopg.AsyncConnection[Any]:
                return await psycopg.AsyncConnection.connect(conninfo, **kwargs)

            return AdvisoryLockElection(connect, key)
        raise InvalidParameterError(
            "cannot elect a watchdog leader for this store: it has no DSN to open a dedicated "
            "connection; pass election=AdvisoryLockElection(connect, advisory_lock_key(schema))"
        )

    async def close(self) -> None:
        """Close the pool if this store opened it; a host's pool is left alone."""
        if self._owns_pool:
            await self._pool.close()

    async def __aenter__(self) -> PostgresStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        owner = "owned" if self._owns_pool else "host"
        return f"PostgresStore(schema={self.schema!r}, pool={owner})"
