"""``PostgresStore``: a ``TurnStore`` over a psycopg-pool ``AsyncConnectionPool``.

It hands out pooled connections in autocommit or inside a transaction, runs the schema's
migrations and checks, and builds the watchdog's leader election (a lease row taken through
the store's own connections; or, on request, an advisory lock held on a dedicated connection
opened the way the store's own connections are).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any
from uuid import UUID

import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict

from turnstore.election import LeaderElection
from turnstore.errors import InvalidParameterError
from turnstore.hub import KeepAliveHub
from turnstore.postgres.checkout import AutocommitConnection, checkout, give_back, holding
from turnstore.postgres.election import (
    AdvisoryLockElection,
    ConnectionFactory,
    advisory_lock_key,
    leader_connection_kwargs,
)
from turnstore.postgres.errors import driver_errors
from turnstore.postgres.lease import LeaseElection
from turnstore.postgres.migrations import SchemaStatus, check_schema, migrate
from turnstore.postgres.notify import DEFAULT_CANCEL_POLL_SECS, PostgresFinalizeSignals
from turnstore.postgres.repository import PostgresTurnRepository
from turnstore.postgres.statements import (
    DEFAULT_SCHEMA,
    STILL_RUNNING,
    finalize_channel,
    render,
)
from turnstore.settings import DEFAULT_LOCK_TIMEOUT_SECS
from turnstore.validation import (
    check_bool,
    check_instance,
    check_pool_sizes,
    check_schema_name,
    check_seconds,
    check_text,
)

__all__ = [
    "DEFAULT",
    "DEFAULT_LOCK_TIMEOUT_SECS",
    "MAX_OPEN_TIMEOUT_SECS",
    "Default",
    "PostgresStore",
    "check_dsn",
    "check_prepare_threshold",
]

#: The longest ``timeout`` ``PostgresStore.open`` accepts: a day.
MAX_OPEN_TIMEOUT_SECS = 86_400.0
#: The longest DSN accepted: far above any real connection string.
_MAX_DSN_CHARS = 8192

Connection = psycopg.AsyncConnection[Any]
Pool = psycopg_pool.AsyncConnectionPool[Any]

#: The ``application_name`` of the dedicated connections, to spot them in
#: ``pg_stat_activity``.
_LEADER_APPLICATION_NAME = "turnstore-watchdog"
_LISTENER_APPLICATION_NAME = "turnstore-listener"


class Default(enum.Enum):
    """The type of ``DEFAULT``: an argument left out (``None`` means something else)."""

    DEFAULT = "DEFAULT"


#: ``prepare_threshold`` left out: psycopg's own default.
DEFAULT = Default.DEFAULT


def check_prepare_threshold(value: object) -> int | None:
    """``None`` (never prepare) or an int >= 0 (prepare after that many uses; 0: at once)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidParameterError(
            f"prepare_threshold must be None (never prepare) or an int >= 0, got {value!r}"
        )
    return value


def check_dsn(dsn: object, name: str = "dsn") -> str:
    """A DSN psycopg can read: text with no NUL and no lone surrogate (an undecodable byte
    of the environment or the command line), in libpq's syntax. ``InvalidParameterError``
    otherwise, before any connection is tried."""
    check_text(name, dsn, max_chars=_MAX_DSN_CHARS, min_chars=0)
    assert isinstance(dsn, str)
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        message = " ".join(str(exc).split())
        raise InvalidParameterError(f"{name} is not a valid connection string: {message}") from exc
    return dsn


class PostgresStore:
    """A ``TurnStore`` over a psycopg-pool ``AsyncConnectionPool``.

    ``await PostgresStore.open(dsn)`` creates and owns a pool of autocommit connections;
    ``PostgresStore(pool=host_pool)`` wraps a pool the host owns (``close`` then leaves it
    open). ``connection()`` hands out a connection in autocommit (each call atomic on its
    own); ``transaction()`` one inside a transaction, committed on clean exit.
    ``finalize_signals()`` tells streams of finalized turns (docs/lifecycle.md, *Cancel*).

    Args:
        pool: The connection pool; the store never changes its settings.
        schema: The schema holding ``chat_turns``.
        dsn: The DSN the pool was opened from, if any: dedicated connections (the
            watchdog's leader, the finalize listener) are opened from it, else from the
            pool's conninfo and kwargs.
        owns_pool: Close the pool in ``close()`` (``open`` sets it).
        notifications: Learn of finalized turns by ``LISTEN`` (see ``open``).
        cancel_poll_secs: Seconds between polls of waited turns while no listener
            listens (see ``open``).
        check_connections: Never hand out a pooled connection the server dropped (see
            ``open``).
        lock_timeout_secs: Bound on every wait for a chat or row lock (see ``open``).
        statement_timeout_secs: Bound on statements inside a transaction (see ``open``).
    """

    def __init__(
        self,
        pool: Pool,
        *,
        schema: str = DEFAULT_SCHEMA,
        dsn: str | None = None,
        owns_pool: bool = False,
        notifications: bool = True,
        cancel_poll_secs: float = DEFAULT_CANCEL_POLL_SECS,
        check_connections: bool = True,
        lock_timeout_secs: float | None = DEFAULT_LOCK_TIMEOUT_SECS,
        statement_timeout_secs: float | None = None,
    ) -> None:
        check_instance(
            "pool", pool, psycopg_pool.AsyncConnectionPool, "psycopg_pool.AsyncConnectionPool"
        )
        if dsn is not None:
            check_dsn(dsn)
        check_bool("owns_pool", owns_pool)
        check_bool("notifications", notifications)
        check_seconds("cancel_poll_secs", cancel_poll_secs, 3600.0)
        check_bool("check_connections", check_connections)
        self._pool = pool
        self._dsn = dsn
        self._owns_pool = owns_pool
        self._check_connections = check_connections
        self._turns = PostgresTurnRepository(
            schema,
            lock_timeout_secs=lock_timeout_secs,
            statement_timeout_secs=statement_timeout_secs,
        )
        self._notifications = notifications
        self._cancel_poll_secs = float(cancel_poll_secs)
        self._signals: PostgresFinalizeSignals | None = None
        self._hub: KeepAliveHub | None = None  # async-only
        self._dedicated_kwargs: dict[str, Any] = {}
        self._still_running = render(STILL_RUNNING, self._turns.schema)

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
        notifications: bool = True,
        cancel_poll_secs: float = DEFAULT_CANCEL_POLL_SECS,
        prepare_threshold: int | Default | None = DEFAULT,
        check_connections: bool = True,
        lock_timeout_secs: float | None = DEFAULT_LOCK_TIMEOUT_SECS,
        statement_timeout_secs: float | None = None,
    ) -> PostgresStore:
        """Open a pool of ``min_size..max_size`` autocommit connections to ``dsn``.

        Args:
            dsn: A libpq connection string or URI.
            schema: The schema holding ``chat_turns`` (``"turnstore"`` by default); every
                statement of the store is rendered for it.
            min_size: Connections the pool opens at once and keeps open.
            max_size: The most connections the pool opens under load.
            timeout: Seconds to wait for the first ``min_size`` connections
                (``StoreUnavailableError`` past it), and for a free connection on each later
                call (``PoolTimeoutError``).
            verify_schema: Run ``verify_schema()`` once, so an app that does not migrate
                itself fails at start (``SchemaMismatchError``) instead of on its first
                call.
            notifications: Learn of finalized turns by ``LISTEN`` on one dedicated
                connection (see ``finalize_signals``). ``False`` where ``LISTEN`` cannot
                work, such as behind a transaction-mode pooler: waited turns are then
                polled every ``cancel_poll_secs``.
            cancel_poll_secs: Seconds between two polls of the waited turns when no
                listener is listening (notifications off, or the listening connection
                down and reconnecting).
            prepare_threshold: psycopg's ``prepare_threshold`` for the store's connections:
                left out, psycopg's own default (statements prepared after a few uses);
                ``None`` never prepares, which a transaction-pooling pooler (PgBouncer in
                transaction mode, RDS Proxy, Supavisor) needs (docs/deploying.md,
                *Poolers*).
            check_connections: Never hand out a pooled connection the server dropped (a
                restart, a crash, a failover): a socket check per checkout, a round trip
                only for a connection that looks dead (docs/deploying.md, *Restarts and
                failover*).
            lock_timeout_secs: Bound on every wait for a chat or row lock, set per
                transaction (``LockTimeoutError`` past it; 10 s by default); ``None``
                leaves the server's ``lock_timeout``.
            statement_timeout_secs: Bound on the statements of a transaction after the
                first one turnstore sends in it (``StatementTimeoutError``); ``None`` (the
                default) leaves the server's ``statement_timeout``. See
                docs/deploying.md, *Timeouts*.

        On any failure the pool is closed before the error propagates.

        Every argument is checked first (``InvalidParameterError``, nothing opened): ``dsn``
        text in libpq's syntax, ``schema`` a name PostgreSQL keeps as given
        (``check_schema_name``), ``0 <= min_size`` and ``max(1, min_size) <= max_size``
        (ints, at most 10000), ``timeout`` a finite number of seconds in (0, 86400],
        ``cancel_poll_secs`` in (0, 3600], ``prepare_threshold`` ``None`` or an int >= 0,
        the two timeouts ``None`` or seconds in [0.001, 86400].
        """
        check_dsn(dsn)
        check_schema_name(schema)
        check_pool_sizes(min_size, max_size)
        check_seconds("timeout", timeout, MAX_OPEN_TIMEOUT_SECS)
        check_bool("verify_schema", verify_schema)
        check_bool("notifications", notifications)
        check_seconds("cancel_poll_secs", cancel_poll_secs, 3600.0)
        check_bool("check_connections", check_connections)
        repository = PostgresTurnRepository(
            schema,
            lock_timeout_secs=lock_timeout_secs,
            statement_timeout_secs=statement_timeout_secs,
        )
        kwargs: dict[str, Any] = {"autocommit": True}
        if not isinstance(prepare_threshold, Default):
            kwargs["prepare_threshold"] = check_prepare_threshold(prepare_threshold)
        pool: Pool = psycopg_pool.AsyncConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            kwargs=kwargs,
            open=False,
            name=f"turnstore:{schema}",
        )
        try:
            with driver_errors:
                await pool.open(wait=True, timeout=timeout)
            store = cls(
                pool,
                schema=repository.schema,
                dsn=dsn,
                owns_pool=True,
                notifications=notifications,
                cancel_poll_secs=cancel_poll_secs,
                check_connections=check_connections,
                lock_timeout_secs=lock_timeout_secs,
                statement_timeout_secs=statement_timeout_secs,
            )
            store._dedicated_kwargs = dict(kwargs)
            if verify_schema:
                await store.verify_schema()
        except BaseException:
            await pool.close()
            raise
        return store

    @property
    def turns(self) -> PostgresTurnRepository:
        """The repository bound to this store's schema."""
        return self._turns

    @property
    def schema(self) -> str:
        """The schema holding ``chat_turns``."""
        return self._turns.schema

    @property
    def pool(self) -> Pool:
        """The connection pool (the store's own, or the host's)."""
        return self._pool

    @property
    def dsn(self) -> str | None:
        """The DSN the store opened, or ``None`` when it wraps a host's pool."""
        return self._dsn

    def connection(self) -> AbstractAsyncContextManager[Connection]:
        """A pooled connection in **autocommit**, for one ``async with`` block.

        Each statement commits on its own: the repository calls made on it are atomic one
        by one, never together, and a host write made on it is not rolled back by a later
        error. Use ``transaction()`` for several statements that must commit together. A
        host pool's connection is switched to autocommit for the block and switched back
        on exit; the connection goes back to the pool when the block ends. With
        ``check_connections`` a connection the server dropped is never handed out.
        """
        return AutocommitConnection(self._pool, check=self._check_connections)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A pooled connection inside a transaction: committed when the block ends
        normally, rolled back when it raises. Pass it as the ``runner`` of every call that
        belongs to the transaction: a call that takes a connection of its own while this
        block holds one can wait for itself (``PoolDeadlockError`` when the pool times
        out)."""
        pool = self._pool
        conn = await checkout(pool, check=self._check_connections)
        try:
            with holding(pool), driver_errors:
                async with conn.transaction():
                    yield conn
        finally:
            await give_back(pool, conn)

    async def migrate(self, partitions: int | None = None) -> None:
        """Apply pending migrations to this store's schema (see ``migrate``); ``partitions``
        chooses the layout of a new schema (docs/schema.md, *The partitioned layout*)."""
        async with self.connection() as conn:
            await migrate(conn, schema=self.schema, partitions=partitions)

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

    def finalize_signals(self) -> PostgresFinalizeSignals:  # async-only
        """The store's finalize signals (see ``turnstore.signals``), created on first use.

        With notifications on, the first watched turn opens one listening connection
        outside the pool, from the store's DSN or the pool's conninfo and kwargs; a pool
        whose conninfo or kwargs are callables gives nothing to open it from, and the
        store polls instead, as it does with ``notifications=False``.
        """
        if self._signals is None:
            connect = self._dedicated_connect(_LISTENER_APPLICATION_NAME)
            self._signals = PostgresFinalizeSignals(
                finalize_channel(self.schema),
                self._running_among,
                connect if self._notifications else None,
                poll_secs=self._cancel_poll_secs,
            )
        return self._signals

    def keepalive_hub(self) -> KeepAliveHub:  # async-only
        """The store's keep-alive hub (docs/design.md, *Keep-alive hub*), created on first
        use and closed with the store: batched keep-alives register with it, and each of
        its ticks writes the due ones in one statement."""
        if self._hub is None:
            self._hub = KeepAliveHub(self)
        return self._hub

    async def _running_among(self, turn_ids: list[UUID]) -> set[UUID]:
        async with self.connection() as conn:
            with driver_errors:
                cur = await conn.execute(self._still_running, (turn_ids,))
                return {row[0] for row in await cur.fetchall()}

    def _dedicated_connect(self, application_name: str) -> ConnectionFactory | None:
        """Opens a connection outside the pool, bounded as the leader's is (see
        ``leader_connection_kwargs``); ``None`` when there is nothing to open it from."""
        if self._dsn:
            conninfo: object = self._dsn
            pool_kwargs: object = self._dedicated_kwargs
        else:
            conninfo = self._pool.conninfo
            pool_kwargs = self._pool.kwargs
        if not isinstance(conninfo, str) or not (
            pool_kwargs is None or isinstance(pool_kwargs, dict)
        ):
            return None
        kwargs = leader_connection_kwargs(conninfo, dict(pool_kwargs or {}))
        kwargs["application_name"] = application_name
        dsn = conninfo

        async def connect() -> psycopg.AsyncConnection[Any]:
            return await psycopg.AsyncConnection.connect(dsn, **kwargs)

        return connect

    def leader_election(self) -> LeaderElection:
        """A new lease election for this schema's watchdog (``LeaseElection``, default
        timings): a row of ``watchdog_leases`` taken and renewed through this store's own
        connections, so it holds behind a transaction-pooling PgBouncer as well. (The
        generated sync store elects with ``advisory_lock_election()`` instead: direct
        connections only; see docs/sync.md.)"""
        return self._lease_election()  # sync: return self.advisory_lock_election()

    def _lease_election(self) -> LeaseElection:  # async-only
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
        connect = self._dedicated_connect(_LEADER_APPLICATION_NAME)
        if connect is not None:
            return AdvisoryLockElection(connect, key)
        raise InvalidParameterError(
            "cannot elect a watchdog leader for this store: it has no DSN to open a dedicated "
            "connection; pass election=AdvisoryLockElection(connect, advisory_lock_key(schema))"
        )

    async def close(self) -> None:
        """Stop the finalize signals (closing the listening connection), then close the
        pool if this store opened it; a host's pool is left alone."""
        if self._hub is not None:  # async-only
            await self._hub.close()
        if self._signals is not None:  # async-only
            await self._signals.close()
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
