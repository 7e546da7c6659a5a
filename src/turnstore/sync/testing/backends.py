# WARNING: this file is generated from src/turnstore/testing/backends.py by tools/async_to_sync.py; do not edit.
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
from turnstore.sync.repository import TurnStore
from turnstore.testing.backends import _INSTALL_CLOCK, _SET_CLOCK, _SET_SEARCH_PATH, CLOCK_SCHEMA

__all__ = ["CLOCK_SCHEMA", "BackendHarness", "MemoryHarness", "PostgresHarness"]


class BackendHarness(Protocol):
    """What the conformance suite needs of a backend."""

    @property
    def name(self) -> str: ...

    @property
    def store(self) -> TurnStore[Any]: ...

    def advance_time(self, seconds: float) -> None:
        """Make ``seconds`` pass for every turn already stored."""
        ...

    def set_time(self, at: datetime) -> None:
        """Make the next statement read exactly ``at`` (timezone-aware) as the time, even
        when that is earlier than a time already read; each later statement reads one
        microsecond more than the one before, until time is set or advanced again."""
        ...


@dataclass
class MemoryHarness:
    """The in-memory fake driven by a ``ManualClock``."""

    store: Any
    clock: Any
    name: str = field(default="memory")

    def advance_time(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def set_time(self, at: datetime) -> None:
        self.clock.set(at)


@dataclass
class PostgresHarness:
    """A ``PostgresStore`` on a throwaway database."""

    store: Any
    schema: str = "turnstore"
    name: str = field(default="postgres")
    _clock_installed: bool = field(default=False, init=False, repr=False)

    def advance_time(self, seconds: float) -> None:
        query = sql.SQL(
            "UPDATE {schema}.chat_turns SET started_at = started_at - make_interval(secs => {s}), last_progress_at = last_progress_at - make_interval(secs => {s}), completed_at = completed_at - make_interval(secs => {s}), deleted_at = deleted_at - make_interval(secs => {s}), updated_at = updated_at - make_interval(secs => {s})"
        ).format(schema=sql.Identifier(self.schema), s=sql.Literal(float(seconds)))
        with self.store.connection() as conn:
            conn.execute(query)

    def set_time(self, at: datetime) -> None:
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
            self._install_clock(names)
        with self.store.connection() as conn:
            conn.execute(_SET_CLOCK.format(**names), (at,))

    def _install_clock(self, names: dict[str, sql.Composable]) -> None:
        pool = self.store.pool
        with self.store.connection() as conn:
            cur = conn.execute("SELECT current_database()")
            row = cur.fetchone()
            assert row is not None
            database = sql.Identifier(row[0])
            with conn.transaction():
                conn.execute(_INSTALL_CLOCK.format(database=database, **names))
        idle = int(pool.get_stats().get("pool_available", 0))
        conns = [pool.getconn() for _ in range(idle)]
        try:
            for conn in conns:
                conn.execute(_SET_SEARCH_PATH.format(**names))
                conn.commit()
        finally:
            for conn in conns:
                pool.putconn(conn)
        self._clock_installed = True
