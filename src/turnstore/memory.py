"""The in-memory backend: the same protocol, results, errors and ordering as PostgreSQL.

``InMemoryStore`` keeps turns in process memory for host test suites. It is not a toy
copy of the rules: every decision calls the pure functions of ``turnstore.rules`` and
``AccessScope.permits``, and transactions behave like PostgreSQL's READ COMMITTED:

- each call reads the latest committed rows plus its own transaction's writes;
- a row written (or locked by ``find_latest_for_update``) by an open transaction is
  locked: another transaction's write to it waits until the first ends, then re-checks its
  predicate on the committed row, as PostgreSQL's EvalPlanQual does;
- an insert that collides with another open transaction's uncommitted row waits for that
  transaction, then fails with the typed error if it committed or goes on if it rolled back;
- ``find_latest_for_update`` serializes the chat, like the PostgreSQL backend's
  transaction-level advisory lock;
- a transaction that raises leaves no trace;
- outside a transaction each call is a statement of its own; one that finds its rows free
  never waits, so it commits directly, without the bookkeeping a wait would need.

Rows are indexed by id, by ``(chat_id, request_id)``, by the running turn of each chat, by
``(started_at, id)`` per chat and by ``(last_progress_at, id)`` over running turns, so no
lookup walks all rows. Stored rows are never handed out: callers get copies.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left, insort
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any, Protocol
from uuid import UUID

from psycopg.errors import DeadlockDetected, InFailedSqlTransaction

from turnstore import rules
from turnstore.election import InProcessElection
from turnstore.errors import (
    DuplicateRequestError,
    DuplicateTurnIdError,
    GenerationInProgressError,
    InvalidParameterError,
    ScopeDeniedError,
    StoreUnavailableError,
    TurnNotFoundError,
    TurnStoreError,
)
from turnstore.model import (
    CasCompleteParams,
    CasTerminalParams,
    CreateTurnParams,
    ToolCallType,
    Turn,
    TurnState,
    UpdatePreflightParams,
    check_instance,
    check_scope,
    check_uuid,
    trusted_turn,
    validate_orphan_args,
)
from turnstore.scope import AccessScope

__all__ = [
    "Clock",
    "InMemoryConnection",
    "InMemoryStore",
    "InMemoryTurnRepository",
    "MonotonicClock",
    "SystemClock",
]

#: The resolution of ``timestamptz``, and the least step between two clock readings.
_TICK = timedelta(microseconds=1)

_Key = tuple[datetime, UUID]

#: How many times ``find_latest_for_update`` re-reads, as in the PostgreSQL backend.
_MAX_RELOCKS = 8


class Clock(Protocol):
    """Where the in-memory store reads "database time"."""

    def now(self) -> datetime:
        """The current instant, timezone-aware, later than any earlier reading."""
        ...


class MonotonicClock:
    """A clock whose readings strictly increase, like PostgreSQL's ``clock_timestamp()``.

    Each reading is at least one microsecond after the previous one, so turns created later
    sort later even when two readings fall in the same microsecond. Subclasses say where
    raw time comes from.
    """

    def __init__(self) -> None:
        self._last: datetime | None = None

    @property
    def last(self) -> datetime | None:
        """The latest reading handed out, if any."""
        return self._last

    def _read(self) -> datetime:
        raise NotImplementedError

    def now(self) -> datetime:
        reading = self._read()
        if self._last is not None and reading <= self._last:
            reading = self._last + _TICK
        self._last = reading
        return reading


class SystemClock(MonotonicClock):
    """The wall clock (UTC), made strictly increasing: the default of ``InMemoryStore``."""

    def _read(self) -> datetime:
        return datetime.now(timezone.utc)


class _Txn:
    """One transaction's bookkeeping: what it wrote, what it locked, whom it waits for."""

    __slots__ = (
        "aborted",
        "chat_locks",
        "chat_writes",
        "locked",
        "wait_future",
        "wait_seq",
        "waiters",
        "waiting_on",
        "written",
    )

    def __init__(self) -> None:
        self.written: set[UUID] = set()
        self.chat_writes: dict[UUID, set[UUID]] = {}
        self.locked: set[UUID] = set()
        self.chat_locks: set[UUID] = set()
        # Futures of the transactions waiting for this one to end.
        self.waiters: list[asyncio.Future[None]] = []
        self.waiting_on: _Txn | None = None
        self.wait_future: asyncio.Future[None] | None = None
        self.wait_seq = 0
        # Failed like a PostgreSQL transaction after an error: only a rollback is left.
        self.aborted = False


@dataclass(eq=False, slots=True)
class _Row:
    """One row: its committed version, and at most one open transaction's pending version.

    ``holder`` is the transaction holding the row lock: the writer, or a
    ``find_latest_for_update`` locker that has not written it.
    """

    committed: Turn | None
    writer: _Txn | None = None
    pending: Turn | None = None
    holder: _Txn | None = None


_CREATE_FIELDS = tuple(CreateTurnParams.model_fields)
#: Every field in the model's order, holding the column defaults ``create_turn`` leaves.
_INSERT_TEMPLATE: dict[str, Any] = {
    name: None if field.is_required() else field.default
    for name, field in Turn.model_fields.items()
}


def _evolve(turn: Turn, changes: dict[str, Any]) -> Turn:
    """A new version of ``turn`` with ``changes``: the fake's UPDATE."""
    data = turn.__dict__.copy()
    data.update(changes)
    return trusted_turn(data)


def _copy(turn: Turn) -> Turn:
    """A copy for the caller, so that nothing a caller does can reach a stored row."""
    return trusted_turn(turn.__dict__.copy())


def _out(turn: Turn | None) -> Turn | None:
    return None if turn is None else _copy(turn)


def _latest_key(turn: Turn | None) -> _Key | None:
    """The row's entry in its chat's latest-turn index, if it has one (live rows)."""
    return rules.latest_sort_key(turn) if turn is not None and rules.is_live(turn) else None


def _orphan_key(turn: Turn | None) -> _Key | None:
    """The row's entry in the orphan order, if it has one (running, non-deleted rows)."""
    if turn is None or not rules.holds_running_slot(turn):
        return None
    return rules.orphan_sort_key(turn)


def _insert_key(keys: list[_Key], key: _Key) -> None:
    """``insort``, with the common case first: a key of a fresh clock reading sorts last."""
    if not keys or keys[-1] < key:
        keys.append(key)
    else:
        insort(keys, key)


def _remove_key(keys: list[_Key], key: _Key) -> None:
    index = bisect_left(keys, key)
    if index < len(keys) and keys[index] == key:
        del keys[index]


class _Database:
    """The rows, their indexes, the lock tables and the clock of one ``InMemoryStore``."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.rows: dict[UUID, _Row] = {}
        # Committed and pending inserts alike, as a unique index holds both.
        self.by_request: dict[tuple[UUID, UUID], UUID] = {}
        # Rows any of whose versions (committed or pending) holds the chat's running slot.
        self.running: dict[UUID, set[UUID]] = {}
        # Committed, non-deleted rows of each chat by (started_at, id).
        self.latest: dict[UUID, list[_Key]] = {}
        # Committed running, non-deleted rows by (last_progress_at, id).
        self.orphan_order: list[_Key] = []
        self.chat_locks: dict[UUID, _Txn] = {}
        self.wait_seq = 0

    # -- visibility ---------------------------------------------------------------------

    @staticmethod
    def visible(txn: _Txn, row: _Row | None) -> Turn | None:
        """The version ``txn`` reads: its own pending write, else the committed one."""
        if row is None:
            return None
        if row.writer is txn:
            return row.pending
        return row.committed

    def get(self, txn: _Txn, turn_id: UUID) -> Turn | None:
        return self.visible(txn, self.rows.get(turn_id))

    # -- transactions -------------------------------------------------------------------

    def commit(self, txn: _Txn) -> None:
        for turn_id in txn.written:
            row = self.rows[turn_id]
            new = row.pending
            assert new is not None
            assert row.writer is txn
            old, row.committed, row.pending, row.writer = row.committed, new, None, None
            self._reindex_committed(old, new)
            self._refresh_running(turn_id, new, row)
        self._release(txn)

    def autocommit_insert(self, turn: Turn) -> None:
        """Insert and commit ``turn`` at once: an INSERT in a transaction of its own that
        ``insert_blocker`` let through without waiting."""
        row = _Row(committed=turn)
        self.rows[turn.id] = row
        self.by_request[(turn.chat_id, turn.request_id)] = turn.id
        self._reindex_committed(None, turn)
        self._refresh_running(turn.id, turn, row)

    def autocommit_update(self, row: _Row, new: Turn) -> None:
        """Commit ``new`` over ``row``'s committed version at once: an UPDATE in a
        transaction of its own, on a row no transaction holds (so none has a pending
        version of it)."""
        assert row.holder is None
        assert row.pending is None
        old, row.committed = row.committed, new
        assert old is not None
        self._reindex_committed(old, new)
        if rules.holds_running_slot(old) is not rules.holds_running_slot(new):
            self._refresh_running(new.id, new, row)

    def rollback(self, txn: _Txn) -> None:
        for turn_id in txn.written:
            row = self.rows[turn_id]
            assert row.pending is not None
            assert row.writer is txn
            pending = row.pending
            row.pending, row.writer = None, None
            self._refresh_running(turn_id, pending, row)
            if row.committed is None:
                del self.rows[turn_id]
                del self.by_request[(pending.chat_id, pending.request_id)]
        self._release(txn)

    def _release(self, txn: _Txn) -> None:
        for turn_id in txn.locked:
            row = self.rows.get(turn_id)
            if row is not None and row.holder is txn:
                row.holder = None
        for chat_id in txn.chat_locks:
            if self.chat_locks.get(chat_id) is txn:
                del self.chat_locks[chat_id]
        txn.written.clear()
        txn.chat_writes.clear()
        txn.locked.clear()
        txn.chat_locks.clear()
        for waiter in txn.waiters:
            if not waiter.done():
                waiter.set_result(None)
        txn.waiters.clear()

    async def wait_for(self, txn: _Txn, holder: _Txn) -> None:
        """Wait until ``holder`` ends, as PostgreSQL waits on a row or advisory lock.

        A wait that closes a cycle is a deadlock. PostgreSQL breaks it by failing the
        waiter whose ``deadlock_timeout`` fires first, which is the one that has waited
        longest when the cycle closes within that timeout; so does this, at once, with
        the same ``DeadlockDetected`` error, leaving that transaction aborted.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.wait_seq += 1
        txn.waiting_on, txn.wait_future, txn.wait_seq = holder, future, self.wait_seq
        holder.waiters.append(future)
        cycle = [txn]
        node = holder.waiting_on
        while node is not None and node is not txn:
            cycle.append(node)
            node = node.waiting_on
        if node is txn:
            cycle.append(holder)
            victim = min(cycle, key=lambda t: t.wait_seq)
            victim.aborted = True
            assert victim.wait_future is not None
            victim.wait_future.set_exception(
                DeadlockDetected("deadlock detected (turnstore in-memory store)")
            )
        try:
            await future
        finally:
            txn.waiting_on, txn.wait_future = None, None

    async def lock_chat(self, txn: _Txn, chat_id: UUID) -> None:
        while (holder := self.chat_locks.get(chat_id)) is not None and holder is not txn:
            await self.wait_for(txn, holder)
        self.chat_locks[chat_id] = txn
        txn.chat_locks.add(chat_id)

    # -- writes -------------------------------------------------------------------------

    async def lock_row(
        self,
        txn: _Txn,
        turn_id: UUID,
        scope: AccessScope | None,
        applies: Callable[[Turn], bool],
    ) -> Turn | None:
        """Find and lock the row an ``UPDATE ... WHERE id = turn_id AND ...`` would change.

        Returns the version to update, or ``None`` when no row matches. A row locked by
        another transaction is waited for and then re-checked on its newly committed
        version (EvalPlanQual); a row that does not match in the first place is never
        waited for. ``scope`` is ``None`` for the unscoped system methods.
        """
        while True:
            row = self.rows.get(turn_id)
            turn = self.visible(txn, row)
            if turn is None or (scope is not None and not scope.permits(turn)):
                return None
            if not applies(turn):
                return None
            assert row is not None
            if row.holder is not None and row.holder is not txn:
                await self.wait_for(txn, row.holder)
                continue
            return turn

    def write(self, txn: _Txn, new: Turn) -> None:
        """Record ``new`` as ``txn``'s pending version of its row (locked by ``txn``)."""
        row = self.rows[new.id]
        row.pending, row.writer, row.holder = new, txn, txn
        txn.written.add(new.id)
        txn.locked.add(new.id)
        txn.chat_writes.setdefault(new.chat_id, set()).add(new.id)
        self._refresh_running(new.id, new, row)

    def insert_blocker(self, txn: _Txn, params: CreateTurnParams) -> _Txn | bool:
        """Would inserting ``params`` collide with a unique index?

        Returns the open transaction to wait for, ``True`` on a collision with a row this
        transaction sees, ``False`` when the insert may go ahead. The indexes are checked
        in PostgreSQL's order: primary key, ``(chat_id, request_id)``, one running turn per
        chat. A row another open transaction is writing is waited for whatever its
        pending version holds, as PostgreSQL waits on a tuple whose inserter or updater
        is still in progress.
        """
        key_holder = self.by_request.get((params.chat_id, params.request_id))
        for turn_id in (params.id, key_holder):
            row = self.rows.get(turn_id) if turn_id is not None else None
            if row is None:
                continue
            if row.writer is not None and row.writer is not txn:
                return row.writer
            return True
        for turn_id in self.running.get(params.chat_id, ()):
            row = self.rows[turn_id]
            if row.writer is not None and row.writer is not txn:
                return row.writer
            turn = self.visible(txn, row)
            if turn is not None and rules.holds_running_slot(turn):
                return True
        return False

    def insert(self, txn: _Txn, turn: Turn) -> None:
        self.rows[turn.id] = _Row(committed=None)
        self.by_request[(turn.chat_id, turn.request_id)] = turn.id
        self.write(txn, turn)

    # -- reads --------------------------------------------------------------------------

    def running_turn(self, txn: _Txn, chat_id: UUID) -> Turn | None:
        for turn_id in self.running.get(chat_id, ()):
            turn = self.visible(txn, self.rows[turn_id])
            if turn is not None and rules.holds_running_slot(turn):
                return turn
        return None

    def latest_turn(self, txn: _Txn, scope: AccessScope, chat_id: UUID) -> Turn | None:
        """The latest non-deleted turn of the chat that ``scope`` permits, as ``txn`` sees it.

        Candidates: this transaction's own writes in the chat, and the newest committed
        entry of the chat's index that it did not write and the scope permits.
        """
        candidates: list[Turn] = []
        for turn_id in txn.chat_writes.get(chat_id, ()):
            turn = self.rows[turn_id].pending
            if turn is not None and scope.permits(turn):
                candidates.append(turn)
        for _, turn_id in reversed(self.latest.get(chat_id, ())):
            if turn_id in txn.written:
                continue
            turn = self.rows[turn_id].committed
            if turn is not None and scope.permits(turn):
                candidates.append(turn)
                break
        return rules.pick_latest(candidates)

    def live_turns_newest_first(self, txn: _Txn, scope: AccessScope, chat_id: UUID) -> list[Turn]:
        """Every non-deleted turn of the chat ``scope`` permits, as ``txn`` sees it now,
        by ``(started_at, id)`` descending: the snapshot a ``FOR UPDATE`` scan walks."""
        turns = [
            turn
            for turn_id in txn.chat_writes.get(chat_id, ())
            if (turn := self.rows[turn_id].pending) is not None and rules.is_live(turn)
        ]
        for _, turn_id in self.latest.get(chat_id, ()):
            if turn_id not in txn.written:
                turn = self.rows[turn_id].committed
                assert turn is not None
                turns.append(turn)
        turns = [turn for turn in turns if scope.permits(turn)]
        turns.sort(key=rules.latest_sort_key, reverse=True)
        return turns

    async def select_latest_for_update(
        self, txn: _Txn, scope: AccessScope, chat_id: UUID
    ) -> Turn | None:
        """``SELECT ... ORDER BY started_at DESC, id DESC LIMIT 1 FOR UPDATE``, PostgreSQL's way.

        The newest row of the statement's snapshot is locked, waiting for its holder if
        need be; after a wait the row is re-checked as committed (EvalPlanQual), and if it
        was deleted meanwhile the scan goes on to the next row *of the old snapshot*, which
        may not be the true latest any more: the caller re-reads to catch that.
        """
        latest = self.latest_turn(txn, scope, chat_id)
        if latest is None:
            return None
        row = self.rows[latest.id]
        if row.holder is None or row.holder is txn:
            self.lock(txn, row, latest.id)
            return latest
        for candidate in self.live_turns_newest_first(txn, scope, chat_id):
            row = self.rows[candidate.id]
            while row.holder is not None and row.holder is not txn:
                await self.wait_for(txn, row.holder)
            current = self.visible(txn, row)
            if current is not None and rules.is_live(current):
                self.lock(txn, row, candidate.id)
                return current
        return None

    @staticmethod
    def lock(txn: _Txn, row: _Row, turn_id: UUID) -> None:
        row.holder = txn
        txn.locked.add(turn_id)

    def orphan_candidates(
        self, txn: _Txn, now: datetime, timeout_secs: int, limit: int
    ) -> list[Turn]:
        found = [
            turn
            for turn_id in txn.written
            if (turn := self.rows[turn_id].pending) is not None
            and rules.is_orphan(turn, now, timeout_secs)
        ]
        committed: list[Turn] = []
        for _, turn_id in self.orphan_order:
            if len(committed) >= limit:
                break
            if turn_id in txn.written:
                continue
            turn = self.rows[turn_id].committed
            assert turn is not None
            if not rules.is_orphan(turn, now, timeout_secs):
                break  # the index is ordered by progress: nothing further is stale
            committed.append(turn)
        found.extend(committed)
        found.sort(key=rules.orphan_sort_key)
        return found[:limit]

    # -- index maintenance --------------------------------------------------------------

    def _reindex_committed(self, old: Turn | None, new: Turn) -> None:
        """Move a row's entries in the committed indexes from version ``old`` (``None``
        for a new row) to ``new``, touching only the entries whose key changed: a
        keep-alive write moves its orphan-order entry and leaves the chat's latest-turn
        entry alone."""
        old_latest = _latest_key(old)
        new_latest = _latest_key(new)
        if old_latest != new_latest:
            if old_latest is not None:
                keys = self.latest[new.chat_id]
                _remove_key(keys, old_latest)
                if not keys:
                    del self.latest[new.chat_id]
            if new_latest is not None:
                _insert_key(self.latest.setdefault(new.chat_id, []), new_latest)
        old_orphan = _orphan_key(old)
        new_orphan = _orphan_key(new)
        if old_orphan != new_orphan:
            if old_orphan is not None:
                _remove_key(self.orphan_order, old_orphan)
            if new_orphan is not None:
                _insert_key(self.orphan_order, new_orphan)

    def _refresh_running(self, turn_id: UUID, turn: Turn, row: _Row) -> None:
        """Keep ``running`` listing the rows any version of which holds the running slot."""
        holds = any(
            version is not None and rules.holds_running_slot(version)
            for version in (row.committed, row.pending)
        )
        ids = self.running.get(turn.chat_id)
        if holds:
            if ids is None:
                self.running[turn.chat_id] = {turn_id}
            else:
                ids.add(turn_id)
        elif ids is not None:
            ids.discard(turn_id)
            if not ids:
                del self.running[turn.chat_id]


class InMemoryConnection:
    """The runner of the in-memory backend: a handle on a store's data.

    From ``InMemoryStore.transaction()`` every call runs in that one transaction; from
    ``InMemoryStore.connection()`` each call is a transaction of its own (autocommit).
    Calls on one runner are serialized, as on a database connection. A runner is usable
    only inside the ``async with`` block that produced it.
    """

    def __init__(self, database: _Database, txn: _Txn | None) -> None:
        self._database = database
        self._txn = txn
        self._lock = asyncio.Lock()
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

    def _idle_autocommit(self) -> _Database | None:
        """The database, when this is an autocommit runner with no call in flight.

        A call that finds its rows free there can run as a statement of its own without
        the transaction bookkeeping of ``_statement``: it never waits, so nothing else
        runs before it ends, exactly as if it had taken the runner and committed.
        """
        self._check_open()
        if self._txn is None and not self._calls:
            return self._database
        return None

    @asynccontextmanager
    async def _statement(self) -> AsyncIterator[tuple[_Database, _Txn]]:
        """Run one call: in the runner's transaction, or in one of its own (autocommit)."""
        self._check_open()
        self._calls += 1
        try:
            async with self._lock:
                self._check_open()
                if self._txn is not None:
                    if self._txn.aborted:
                        raise InFailedSqlTransaction(
                            "current transaction is aborted, commands ignored until end of "
                            "transaction block"
                        )
                    yield self._database, self._txn
                    return
                txn = _Txn()
                try:
                    yield self._database, txn
                except BaseException:
                    self._database.rollback(txn)
                    raise
                self._database.commit(txn)
        finally:
            self._calls -= 1


def _require_runner(runner: object) -> None:
    if not isinstance(runner, InMemoryConnection):
        raise TypeError(
            "the in-memory repository needs a runner from InMemoryStore.transaction() or "
            f".connection(), got {type(runner).__name__}"
        )


def _statement(runner: InMemoryConnection) -> Any:
    _require_runner(runner)
    return runner._statement()


def _idle_autocommit(runner: InMemoryConnection) -> _Database | None:
    """See ``InMemoryConnection._idle_autocommit``."""
    _require_runner(runner)
    return runner._idle_autocommit()


#: The transaction of a statement that has written nothing, for the reads of a call on
#: the idle-autocommit path. Nothing ever writes or locks through it.
_NO_WRITES = _Txn()


def _inserted_turn(params: CreateTurnParams, now: datetime) -> Turn:
    """The row ``create_turn`` inserts: the parameters' fields (a subclass's extras are
    not columns), the columns' defaults, ``running``, and the statement's clock reading."""
    given = params.__dict__
    data = _INSERT_TEMPLATE.copy()
    for name in _CREATE_FIELDS:
        data[name] = given[name]
    data["state"] = TurnState.RUNNING
    data["started_at"] = data["last_progress_at"] = data["updated_at"] = now
    return trusted_turn(data)


def _keep_unless_given(new: Any, old: Any) -> Any:
    """``COALESCE(new, old)``: an optional parameter overwrites only when given."""
    return old if new is None else new


class InMemoryTurnRepository:
    """``TurnRepository[InMemoryConnection]``: the 14 methods, decided by ``turnstore.rules``.

    Arguments are checked exactly as ``PostgresTurnRepository`` checks them, with the same
    errors. The repository holds no data; the runner names the store and the transaction.
    """

    async def create_turn(
        self, runner: InMemoryConnection, scope: AccessScope, params: CreateTurnParams
    ) -> Turn:
        check_instance("params", params, CreateTurnParams)
        check_scope(scope)
        if not scope.permits(params):
            raise ScopeDeniedError(params.id, params.tenant_id)
        # One clock reading per statement, taken before any wait, as the INSERT's VALUES
        # are computed before PostgreSQL checks the unique indexes.
        now: datetime | None = None
        if (db := _idle_autocommit(runner)) is not None:
            now = db.clock.now()
            blocker = db.insert_blocker(_NO_WRITES, params)
            if blocker is False:
                turn = _inserted_turn(params, now)
                db.autocommit_insert(turn)
                return _copy(turn)
            if blocker is True:
                raise self._insert_conflict(db, _NO_WRITES, scope, params)
            # Another transaction's uncommitted row is in the way: wait for it below.
        async with _statement(runner) as (db, txn):
            if now is None:
                now = db.clock.now()
            while (blocker := db.insert_blocker(txn, params)) is not False:
                if blocker is True:
                    raise self._insert_conflict(db, txn, scope, params)
                await db.wait_for(txn, blocker)
            turn = _inserted_turn(params, now)
            db.insert(txn, turn)
            return _copy(turn)

    @staticmethod
    def _insert_conflict(
        db: _Database, txn: _Txn, scope: AccessScope, params: CreateTurnParams
    ) -> TurnStoreError:
        """Which rule refused the row, in the PostgreSQL backend's order: the id, the
        idempotency key, then the chat's running turn; an error names the conflicting turn
        only when the scope permits it."""
        if db.get(txn, params.id) is not None:
            return DuplicateTurnIdError(params.id)
        holder_id = db.by_request.get((params.chat_id, params.request_id))
        holder = db.get(txn, holder_id) if holder_id is not None else None
        if holder is not None:
            shown = holder.id if scope.permits(holder) else None
            return DuplicateRequestError(params.chat_id, params.request_id, shown)
        running = db.running_turn(txn, params.chat_id)
        running_id = running.id if running is not None and scope.permits(running) else None
        return GenerationInProgressError(params.chat_id, running_id)

    async def find_by_chat_and_request_id(
        self, runner: InMemoryConnection, scope: AccessScope, chat_id: UUID, request_id: UUID
    ) -> Turn | None:
        check_uuid("chat_id", chat_id)
        check_uuid("request_id", request_id)
        check_scope(scope)
        async with _statement(runner) as (db, txn):
            turn_id = db.by_request.get((chat_id, request_id))
            turn = db.get(txn, turn_id) if turn_id is not None else None
            return _out(turn) if turn is not None and scope.permits(turn) else None

    async def find_running_by_chat_id(
        self, runner: InMemoryConnection, scope: AccessScope, chat_id: UUID
    ) -> Turn | None:
        check_uuid("chat_id", chat_id)
        check_scope(scope)
        async with _statement(runner) as (db, txn):
            turn = db.running_turn(txn, chat_id)
            return _out(turn) if turn is not None and scope.permits(turn) else None

    async def cas_update_state(
        self, runner: InMemoryConnection, scope: AccessScope, params: CasTerminalParams
    ) -> int:
        check_instance("params", params, CasTerminalParams)
        check_scope(scope)
        return await _update_count(
            runner,
            scope,
            params.turn_id,
            _ignoring_time(rules.terminal_cas_applies),
            lambda turn, now: {
                "state": params.state,
                "error_code": params.error_code,
                "error_detail": params.error_detail,
                "assistant_message_id": _keep_unless_given(
                    params.assistant_message_id, turn.assistant_message_id
                ),
                "provider_response_id": _keep_unless_given(
                    params.provider_response_id, turn.provider_response_id
                ),
                "completed_at": now,
                "updated_at": now,
            },
        )

    async def cas_update_completed(
        self, runner: InMemoryConnection, scope: AccessScope, params: CasCompleteParams
    ) -> int:
        check_instance("params", params, CasCompleteParams)
        check_scope(scope)
        return await _update_count(
            runner,
            scope,
            params.turn_id,
            _ignoring_time(rules.terminal_cas_applies),
            lambda turn, now: {
                "state": TurnState.COMPLETED,
                "assistant_message_id": params.assistant_message_id,
                "provider_response_id": _keep_unless_given(
                    params.provider_response_id, turn.provider_response_id
                ),
                "completed_at": now,
                "updated_at": now,
            },
        )

    async def set_assistant_message_id(
        self,
        runner: InMemoryConnection,
        scope: AccessScope,
        turn_id: UUID,
        assistant_message_id: UUID,
    ) -> None:
        check_uuid("turn_id", turn_id)
        check_uuid("assistant_message_id", assistant_message_id)
        check_scope(scope)
        written = await _update(
            runner,
            scope,
            turn_id,
            _any_row,
            lambda _turn, now: {"assistant_message_id": assistant_message_id, "updated_at": now},
        )
        if written is None:
            raise TurnNotFoundError(turn_id)

    async def soft_delete(
        self,
        runner: InMemoryConnection,
        scope: AccessScope,
        turn_id: UUID,
        replaced_by_request_id: UUID | None,
    ) -> None:
        check_uuid("turn_id", turn_id)
        if replaced_by_request_id is not None:
            check_uuid("replaced_by_request_id", replaced_by_request_id)
        check_scope(scope)

        def first_delete_only(turn: Turn, now: datetime) -> dict[str, Any]:
            # A repeated delete changes no value but, like the UPDATE it stands for, still
            # writes (and so locks) the row until the transaction ends.
            if not rules.is_live(turn):
                return {}
            return {
                "deleted_at": now,
                "replaced_by_request_id": replaced_by_request_id,
                "updated_at": now,
            }

        if await _update(runner, scope, turn_id, _any_row, first_delete_only) is None:
            raise TurnNotFoundError(turn_id)

    async def find_latest_turn(
        self, runner: InMemoryConnection, scope: AccessScope, chat_id: UUID
    ) -> Turn | None:
        check_uuid("chat_id", chat_id)
        check_scope(scope)
        async with _statement(runner) as (db, txn):
            return _out(db.latest_turn(txn, scope, chat_id))

    async def update_progress_at(
        self, runner: InMemoryConnection, scope: AccessScope, turn_id: UUID
    ) -> int:
        check_uuid("turn_id", turn_id)
        check_scope(scope)
        return await _update_count(
            runner,
            scope,
            turn_id,
            _ignoring_time(rules.progress_update_applies),
            lambda _turn, now: {"last_progress_at": now, "updated_at": now},
        )

    async def find_orphan_candidates(
        self, runner: InMemoryConnection, timeout_secs: int, limit: int
    ) -> list[Turn]:
        validate_orphan_args(timeout_secs, limit)
        async with _statement(runner) as (db, txn):
            now = db.clock.now()
            return [_copy(t) for t in db.orphan_candidates(txn, now, timeout_secs, limit)]

    async def cas_finalize_orphan(
        self, runner: InMemoryConnection, turn_id: UUID, timeout_secs: int
    ) -> int:
        check_uuid("turn_id", turn_id)
        validate_orphan_args(timeout_secs)
        # The statement's one reading serves the first check and, after a wait, the
        # re-check: a turn kept alive meanwhile is no longer an orphan at that instant.
        return await _update_count(
            runner,
            None,
            turn_id,
            lambda turn, now: rules.is_orphan(turn, now, timeout_secs),
            lambda _turn, now: {
                "state": TurnState.FAILED,
                "error_code": rules.ORPHAN_ERROR_CODE,
                "completed_at": now,
                "updated_at": now,
            },
        )

    async def find_latest_for_update(
        self, runner: InMemoryConnection, scope: AccessScope, chat_id: UUID
    ) -> Turn | None:
        """Take the chat's lock, lock the latest turn, then re-read the latest: when a
        transaction that bypassed the chat lock replaced the row waited on, go again
        (as the PostgreSQL backend does, a bounded number of times)."""
        check_uuid("chat_id", chat_id)
        check_scope(scope)
        async with _statement(runner) as (db, txn):
            await db.lock_chat(txn, chat_id)
            turn: Turn | None = None
            for _ in range(_MAX_RELOCKS):
                turn = await db.select_latest_for_update(txn, scope, chat_id)
                latest = db.latest_turn(txn, scope, chat_id)
                if (turn.id if turn else None) == (latest.id if latest else None):
                    break
            return _out(turn)

    async def update_preflight_fields(
        self, runner: InMemoryConnection, scope: AccessScope, params: UpdatePreflightParams
    ) -> int:
        check_instance("params", params, UpdatePreflightParams)
        check_scope(scope)
        fields = params.model_dump(exclude={"turn_id"})
        return await _update_count(
            runner,
            scope,
            params.turn_id,
            _ignoring_time(rules.preflight_update_applies),
            lambda _turn, now: {**fields, "updated_at": now},
        )

    async def increment_tool_calls(
        self, runner: InMemoryConnection, scope: AccessScope, turn_id: UUID, tool: ToolCallType
    ) -> None:
        check_uuid("turn_id", turn_id)
        if tool not in _TOOLS:
            raise InvalidParameterError(f"tool must be a ToolCallType, got {tool!r}")
        check_scope(scope)
        counter = ToolCallType(tool).column
        await _update(
            runner,
            scope,
            turn_id,
            _ignoring_time(rules.tool_increment_applies),
            lambda turn, now: {counter: getattr(turn, counter) + 1, "updated_at": now},
        )


_Predicate = Callable[[Turn, datetime], bool]
_Change = Callable[[Turn, datetime], dict[str, Any]]


async def _update(
    runner: InMemoryConnection,
    scope: AccessScope | None,
    turn_id: UUID,
    applies: _Predicate,
    change: _Change,
) -> Turn | None:
    """``UPDATE ... SET change WHERE id = turn_id AND applies AND scope``: the one way the
    fake changes a row. Both callables get the row and the statement's one clock reading.
    Returns the row as written, or ``None`` when nothing matched."""
    now: datetime | None = None
    if (db := _idle_autocommit(runner)) is not None:
        row = db.rows.get(turn_id)
        now = db.clock.now()
        if row is None or row.holder is None:
            # No transaction holds the row, so nothing is waited for: the statement
            # commits before any other task runs.
            turn = None if row is None else row.committed
            if (
                turn is None
                or (scope is not None and not scope.permits(turn))
                or not applies(turn, now)
            ):
                return None
            assert row is not None
            new = _evolve(turn, change(turn, now))
            db.autocommit_update(row, new)
            return new
        # Another transaction holds the row: lock it, waiting, below.
    async with _statement(runner) as (db, txn):
        if now is None:
            now = db.clock.now()
        turn = await db.lock_row(txn, turn_id, scope, lambda t: applies(t, now))
        if turn is None:
            return None
        new = _evolve(turn, change(turn, now))
        db.write(txn, new)
        return new


async def _update_count(
    runner: InMemoryConnection,
    scope: AccessScope | None,
    turn_id: UUID,
    applies: _Predicate,
    change: _Change,
) -> int:
    """``_update`` reporting rows affected, as the CAS methods do."""
    return 0 if await _update(runner, scope, turn_id, applies, change) is None else 1


def _ignoring_time(rule: Callable[[Turn], bool]) -> _Predicate:
    """A rule that does not depend on the clock, as an update predicate."""
    return lambda turn, _now: rule(turn)


def _any_row(turn: Turn, now: datetime) -> bool:
    """The predicate of an UPDATE whose WHERE names only the id and the scope."""
    return True


_TOOLS = frozenset(ToolCallType)


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


class InMemoryStore:
    """``TurnStore[InMemoryConnection]`` held in process memory.

    ``clock`` is where database time comes from: ``turnstore.testing.ManualClock`` in
    tests that move time, the strictly increasing wall clock (``SystemClock``) by default.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._database = _Database(self._clock)
        self._turns = InMemoryTurnRepository()
        self._closed = False

    @property
    def clock(self) -> Clock:
        """The clock every timestamp and orphan predicate of this store reads."""
        return self._clock

    @property
    def turns(self) -> InMemoryTurnRepository:
        return self._turns

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailableError("the in-memory store is closed")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[InMemoryConnection]:
        """A runner inside a new transaction: committed when the block ends normally,
        rolled back when it raises (or when a call failed it, as after a deadlock)."""
        self._check_open()
        txn = _Txn()
        runner = InMemoryConnection(self._database, txn)
        try:
            yield runner
        except BaseException:
            runner._close()
            async with runner._lock:  # a call still in flight finishes first
                self._database.rollback(txn)
            raise
        runner._close()
        async with runner._lock:
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

    def leader_election(self) -> InProcessElection:
        """A new election among the watchdogs of this process sharing this store."""
        return InProcessElection(self)

    async def close(self) -> None:
        """Refuse new runners from now on; the stored turns go with the store."""
        self._closed = True

    async def __aenter__(self) -> InMemoryStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
