"""``InMemoryStore``: the in-memory ``TurnStore``, handing out runners in a transaction
or in autocommit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from uuid import UUID

from turnstore.clock import Clock, SystemClock
from turnstore.election import InProcessElection
from turnstore.errors import StoreUnavailableError
from turnstore.hub import KeepAliveHub
from turnstore.memory.connection import InMemoryConnection
from turnstore.memory.database import Database, Transaction
from turnstore.memory.repository import InMemoryTurnRepository
from turnstore.model import TurnState
from turnstore.settings import DEFAULT_LOCK_TIMEOUT_SECS
from turnstore.signals import Waiters
from turnstore.validation import MAX_TIMEOUT_SECS, check_seconds

__all__ = ["InMemoryStore", "InProcessFinalizeSignals"]


class _AutocommitBlock:
    """The block of ``InMemoryStore.connection()``. A class rather than a generator-based
    context manager: keep-alive writes enter one per write, and this costs a fraction."""

    __slots__ = ("_runner", "_store")

    def __init__(self, store: InMemoryStore) -> None:
        self._store = store
        self._runner: InMemoryConnection | None = None

    async def __aenter__(self) -> InMemoryConnection:
        self._store._check_open()
        self._runner = InMemoryConnection(self._store._database, None)
        return self._runner

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            self._runner._close()


class InProcessFinalizeSignals:
    """The fake's ``FinalizeSignals``: the database's commit of a finalizing write wakes
    the waiters of that turn at once, in process (as a PostgreSQL notification does at
    commit); a rolled-back or losing finalize wakes no one."""

    __slots__ = ("_database", "_waiters")

    def __init__(self, database: Database) -> None:
        self._database = database
        self._waiters = Waiters()
        database.on_finalized = self._waiters.fire

    def watch(self, turn_id: UUID, event: asyncio.Event) -> None:
        """Set ``event`` now if the turn's committed version is not running (or there is
        none), else at the commit that finalizes it."""
        row = self._database.rows.get(turn_id)
        turn = row.committed if row is not None else None
        if turn is None or turn.state is not TurnState.RUNNING:
            event.set()
            return
        self._waiters.add(turn_id, event)

    def unwatch(self, turn_id: UUID, event: asyncio.Event) -> None:
        """Forget ``event``; idempotent."""
        self._waiters.discard(turn_id, event)

    @property
    def waiting(self) -> int:
        """How many turns have a waiter."""
        return len(self._waiters)


class InMemoryStore:
    """``TurnStore[InMemoryConnection]`` held in process memory.

    ``clock`` is where database time comes from: ``turnstore.testing.ManualClock`` in
    tests that move time, the strictly increasing wall clock (``SystemClock``) by default.
    ``lock_timeout_secs`` bounds a wait for a chat or row lock held by another open
    transaction, as ``PostgresStore``'s does (10 s by default; ``None``: for ever): past
    it, ``LockTimeoutError`` and the waiting transaction is aborted.
    """

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        lock_timeout_secs: float | None = DEFAULT_LOCK_TIMEOUT_SECS,
    ) -> None:
        if lock_timeout_secs is not None:
            check_seconds("lock_timeout_secs", lock_timeout_secs, MAX_TIMEOUT_SECS)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._database = Database(self._clock, lock_timeout_secs)
        self._turns = InMemoryTurnRepository()
        self._closed = False
        self._signals: InProcessFinalizeSignals | None = None
        self._hub: KeepAliveHub | None = None  # async-only

    @property
    def clock(self) -> Clock:
        """The clock every timestamp and orphan predicate of this store reads."""
        return self._clock

    @property
    def turns(self) -> InMemoryTurnRepository:
        """The in-memory repository."""
        return self._turns

    def finalize_signals(self) -> InProcessFinalizeSignals:
        """The store's finalize signals (see ``turnstore.signals``), created on first use."""
        if self._signals is None:
            self._signals = InProcessFinalizeSignals(self._database)
        return self._signals

    def keepalive_hub(self) -> KeepAliveHub:  # async-only
        """The store's keep-alive hub (docs/design.md, *Keep-alive hub*), created on first
        use and closed with the store: batched keep-alives register with it, and each of
        its ticks writes the due ones in one statement."""
        if self._hub is None:
            self._hub = KeepAliveHub(self)
        return self._hub

    def leader_election(self) -> InProcessElection:
        """A new election among the watchdogs of this process sharing this store."""
        return InProcessElection(self)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailableError("the in-memory store is closed")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[InMemoryConnection]:
        """A runner inside a new transaction: committed when the block ends normally,
        rolled back when it raises (or when a call failed it, as after a deadlock)."""
        self._check_open()
        txn = Transaction()
        runner = InMemoryConnection(self._database, txn)
        try:
            yield runner
        except BaseException:
            runner._close()
            async with runner._lock:  # a call still in flight finishes first
                with self._database.monitor:
                    self._database.rollback(txn)
            raise
        runner._close()
        async with runner._lock:
            with self._database.monitor:
                if txn.aborted:
                    self._database.rollback(txn)
                else:
                    self._database.commit(txn)

    def connection(self) -> AbstractAsyncContextManager[InMemoryConnection]:
        """A runner in autocommit: each call is atomic on its own."""
        return _AutocommitBlock(self)

    async def migrate(self) -> None:
        """Nothing to migrate: the in-memory schema is always current."""
        self._check_open()

    async def close(self) -> None:
        """Refuse new runners from now on; the stored turns go with the store."""
        self._closed = True
        if self._hub is not None:  # async-only
            await self._hub.close()

    async def __aenter__(self) -> InMemoryStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
