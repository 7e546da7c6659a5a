"""Backend harnesses: one object per backend that the conformance suite drives.

A harness owns a ``TurnStore`` and knows the one thing the protocol cannot express in a
backend-neutral way: how to make time pass. On the fake, ``advance_time`` moves the
``ManualClock``; on PostgreSQL (whose clock cannot be moved) it shifts every timestamp of
the table back by the same amount, which is the same thing as far as any predicate
(``last_progress_at <= now - timeout``) or ordering can tell.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from psycopg import sql

from turnstore.repository import TurnStore

__all__ = ["BackendHarness", "MemoryHarness", "PostgresHarness"]


class BackendHarness(Protocol):
    """What the conformance suite needs of a backend."""

    @property
    def name(self) -> str: ...

    @property
    def store(self) -> TurnStore[Any]: ...

    async def advance_time(self, seconds: float) -> None:
        """Make ``seconds`` pass for every turn already stored."""
        ...


@dataclass
class MemoryHarness:
    """The in-memory fake driven by a ``ManualClock``."""

    store: Any  # turnstore.memory.InMemoryStore (imported lazily: no cycle)
    clock: Any  # turnstore.testing.clock.ManualClock
    name: str = field(default="memory")

    async def advance_time(self, seconds: float) -> None:
        self.clock.advance(seconds)


@dataclass
class PostgresHarness:
    """A ``PostgresStore`` on a throwaway database."""

    store: Any  # turnstore.postgres.PostgresStore
    schema: str = "turnstore"
    name: str = field(default="postgres")

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
