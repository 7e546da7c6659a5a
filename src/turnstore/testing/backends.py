"""Backend harnesses: one object per backend that the conformance suite drives.

A harness owns a ``TurnStore`` and knows the one thing the protocol cannot express in a
backend-neutral way: how to control time.

- ``advance_time`` makes time pass. On the fake it moves the ``ManualClock``; on
  PostgreSQL (whose clock cannot be moved) it shifts every timestamp of the table back by
  the same amount, which is the same thing as far as any predicate
  (``last_progress_at <= now - timeout``) or ordering can tell.
- ``set_time`` puts the clock at an exact instant, earlier ones included (a clock that
  steps back). On the fake it sets the ``ManualClock``; on PostgreSQL it shadows
  ``clock_timestamp()``, which every statement reads unqualified, with a function of the
  same name in the ``turnstore_test_clock`` schema, placed before ``pg_catalog`` on the
  database's ``search_path`` (see ``PostgresHarness.set_time``).

After ``set_time(at)`` both backends read ``at`` at the next statement and one microsecond
more at each statement after it, the way ``ManualClock`` behaves while it stands still.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from psycopg import sql

from turnstore.errors import InvalidParameterError
from turnstore.repository import TurnStore

__all__ = ["CLOCK_SCHEMA", "BackendHarness", "MemoryHarness", "PostgresHarness"]

#: The schema holding the controllable ``clock_timestamp()`` of ``PostgresHarness``.
CLOCK_SCHEMA = "turnstore_test_clock"


class BackendHarness(Protocol):
    """What the conformance suite needs of a backend."""

    @property
    def name(self) -> str: ...

    @property
    def store(self) -> TurnStore[Any]: ...

    async def advance_time(self, seconds: float) -> None:
        """Make ``seconds`` pass for every turn already stored."""
        ...

    async def set_time(self, at: datetime) -> None:
        """Make the next statement read exactly ``at`` (timezone-aware) as the time, even
        when that is earlier than a time already read; each later statement reads one
        microsecond more than the one before, until time is set or advanced again."""
        ...


@dataclass
class MemoryHarness:
    """The in-memory fake driven by a ``ManualClock``."""

    store: Any  # turnstore.memory.InMemoryStore (imported lazily: no cycle)
    clock: Any  # turnstore.testing.clock.ManualClock
    name: str = field(default="memory")

    async def advance_time(self, seconds: float) -> None:
        self.clock.advance(seconds)

    async def set_time(self, at: datetime) -> None:
        self.clock.set(at)


# The shadow clock. A set time is stored with the sequence value its first reading will
# draw; each reading draws the next value and adds that many microseconds. A sequence (not
# a counter column) keeps concurrent statements from queueing on one row lock. With no set
# time the real clock is read.
_INSTALL_CLOCK = sql.SQL(
    "CREATE SCHEMA IF NOT EXISTS {schema};"
    " CREATE SEQUENCE IF NOT EXISTS {schema}.readings;"
    " CREATE TABLE IF NOT EXISTS {schema}.set_time ("
    "  only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),"
    "  at timestamptz NOT NULL,"
    "  first_reading bigint NOT NULL);"
    " CREATE OR REPLACE FUNCTION {schema}.clock_timestamp() RETURNS timestamptz"
    " LANGUAGE sql VOLATILE AS $$"
    "  SELECT COALESCE("
    "   (SELECT s.at + (pg_catalog.nextval({readings}) - s.first_reading)"
    "      * interval '1 microsecond'"
    "    FROM {schema}.set_time AS s),"
    "   pg_catalog.clock_timestamp())"
    " $$;"
    # Schemas named before pg_catalog win; the rest of the default path is kept.
    ' ALTER DATABASE {database} SET search_path = {schema}, pg_catalog, "$user", public;'
)

_SET_SEARCH_PATH = sql.SQL('SET search_path = {schema}, pg_catalog, "$user", public')

_SET_CLOCK = sql.SQL(
    "INSERT INTO {schema}.set_time (at, first_reading)"
    " VALUES (%s, pg_catalog.nextval({readings}) + 1)"
    " ON CONFLICT (only_row) DO UPDATE"
    " SET at = excluded.at, first_reading = excluded.first_reading"
)


@dataclass
class PostgresHarness:
    """A ``PostgresStore`` on a throwaway database."""

    store: Any  # turnstore.postgres.PostgresStore
    schema: str = "turnstore"
    name: str = field(default="postgres")
    _clock_installed: bool = field(default=False, init=False, repr=False)

    async def advance_time(self, seconds: float) -> None:
        # The amount is a literal, not a bound parameter: with parameters psycopg would read
        # a ``%`` in the schema name as a placeholder.
        query = sql.SQL(
            "UPDATE {schema}.chat_turns SET"
            " started_at = started_at - make_interval(secs => {s}),"
            " last_progress_at = last_progress_at - make_interval(secs => {s}),"
            " completed_at = completed_at - make_interval(secs => {s}),"
            " deleted_at = deleted_at - make_interval(secs => {s}),"
            " updated_at = updated_at - make_interval(secs => {s})"
        ).format(schema=sql.Identifier(self.schema), s=sql.Literal(float(seconds)))
        async with self.store.connection() as conn:
            await conn.execute(query)

    async def set_time(self, at: datetime) -> None:
        """Set the shadow clock, installing it first if need be.

        Installing changes the database's default ``search_path`` (so it is meant for a
        throwaway database, as the plugin's are) and moves the store's idle pooled
        connections onto it; call it while the store has no connection checked out.
        """
        if at.tzinfo is None or at.utcoffset() is None:
            raise InvalidParameterError("set_time needs a timezone-aware datetime")
        names: dict[str, sql.Composable] = {
            "schema": sql.Identifier(CLOCK_SCHEMA),
            "readings": sql.Literal(f"{CLOCK_SCHEMA}.readings"),
        }
        if not self._clock_installed:
            await self._install_clock(names)
        async with self.store.connection() as conn:
            await conn.execute(_SET_CLOCK.format(**names), (at,))

    async def _install_clock(self, names: dict[str, sql.Composable]) -> None:
        pool = self.store.pool
        async with self.store.connection() as conn:
            cur = await conn.execute("SELECT current_database()")
            row = await cur.fetchone()
            assert row is not None
            database = sql.Identifier(row[0])
            async with conn.transaction():
                await conn.execute(_INSTALL_CLOCK.format(database=database, **names))
        # New connections take the database default; the idle ones get the path set here
        # (a pool keeps session settings across checkouts). ``AsyncConnectionPool.drain``
        # would do it too, but only from psycopg_pool 3.3 on.
        idle = int(pool.get_stats().get("pool_available", 0))
        conns = [await pool.getconn() for _ in range(idle)]
        try:
            for conn in conns:
                await conn.execute(_SET_SEARCH_PATH.format(**names))
                await conn.commit()  # a no-op in autocommit; a host pool may not use it
        finally:
            for conn in conns:
                await pool.putconn(conn)
        self._clock_installed = True
