"""The runner of the in-memory backend, and how a repository call runs on it.

A runner from ``InMemoryStore.transaction()`` runs every call in that one transaction; a
runner from ``InMemoryStore.connection()`` runs each call as a transaction of its own.
Calls on one runner are serialized, as on a database connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from psycopg.errors import InFailedSqlTransaction

from turnstore._compat_async import LOOP_IS_MONITOR, Lock
from turnstore.errors import StoreUnavailableError
from turnstore.memory.database import Database, Transaction

__all__ = ["NO_WRITES", "InMemoryConnection", "idle_autocommit", "require_runner", "statement"]


class InMemoryConnection:
    """The runner of the in-memory backend: a handle on a store's data.

    From ``InMemoryStore.transaction()`` every call runs in that one transaction; from
    ``InMemoryStore.connection()`` each call is a transaction of its own (autocommit).
    Calls on one runner are serialized, as on a database connection. A runner is usable
    only inside the ``async with`` block that produced it.
    """

    def __init__(self, database: Database, txn: Transaction | None) -> None:
        self._database = database
        self._txn = txn
        self._lock = Lock()
        # Calls inside ``_statement``, waiting for the lock or holding it.
        self._calls = 0
        self._open = True

    @property
    def in_transaction(self) -> bool:
        """True for a runner from ``transaction()``, False in autocommit."""
        return self._txn is not None

    @property
    def closed(self) -> bool:
        """True once the block that produced this runner has ended."""
        return not self._open

    def _close(self) -> None:
        self._open = False

    def _check_open(self) -> None:
        if not self._open:
            raise StoreUnavailableError("this runner's block has already ended")

    def _idle_autocommit(self) -> Database | None:
        """The database, when this is an autocommit runner with no call in flight.

        A call that finds its rows free there can run as a statement of its own without
        the transaction bookkeeping of ``_statement``: it never waits, so nothing else
        runs before it ends, exactly as if it had taken the runner and committed. On
        threads (``LOOP_IS_MONITOR`` false) there is no such path: every call takes the
        store's monitor in ``_statement``.
        """
        self._check_open()
        if LOOP_IS_MONITOR and self._txn is None and not self._calls:
            return self._database
        return None

    @asynccontextmanager
    async def _statement(self) -> AsyncIterator[tuple[Database, Transaction]]:
        """Run one call: in the runner's transaction, or in one of its own (autocommit)."""
        self._check_open()
        self._calls += 1
        try:
            async with self._lock:
                self._check_open()
                with self._database.monitor:
                    if self._txn is not None:
                        if self._txn.aborted:
                            raise InFailedSqlTransaction(
                                "current transaction is aborted, commands ignored until end of "
                                "transaction block"
                            )
                        yield self._database, self._txn
                        return
                    txn = Transaction()
                    try:
                        yield self._database, txn
                    except BaseException:
                        self._database.rollback(txn)
                        raise
                    self._database.commit(txn)
        finally:
            self._calls -= 1


def require_runner(runner: object) -> None:
    if not isinstance(runner, InMemoryConnection):
        raise TypeError(
            "the in-memory repository needs a runner from InMemoryStore.transaction() or "
            f".connection(), got {type(runner).__name__}"
        )


def statement(
    runner: InMemoryConnection,
) -> AbstractAsyncContextManager[tuple[Database, Transaction]]:
    """Run one call on ``runner``: see ``InMemoryConnection._statement``."""
    require_runner(runner)
    return runner._statement()


def idle_autocommit(runner: InMemoryConnection) -> Database | None:
    """See ``InMemoryConnection._idle_autocommit``."""
    require_runner(runner)
    return runner._idle_autocommit()


#: The transaction of a statement that has written nothing, for the reads of a call on
#: the idle-autocommit path. Nothing ever writes or locks through it.
NO_WRITES = Transaction()
