"""The fake's storage engine: rows, their indexes, row and chat locks, waits and
transactions, as PostgreSQL's READ COMMITTED has them. A chat is identified by its
``ChatKey``, ``(tenant_id, chat_id)``: two tenants' chats with the same id never meet.

Each row keeps its committed version and at most one open transaction's pending version;
a transaction sees the committed rows plus its own writes. Rows are indexed by id, by
``(tenant_id, chat_id, request_id)``, by the running turn of each chat, by ``(started_at, id)``
per chat and by ``(last_progress_at, id)`` over running turns, so no lookup walks all rows.
A write to a row another open transaction holds waits for it to end, then re-checks its
predicate on the newly committed version, as PostgreSQL's EvalPlanQual does; a wait that
closes a cycle fails with ``DeadlockDetected``.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from psycopg.errors import DeadlockDetected

from turnstore import rules
from turnstore._compat_async import Monitor, Waiter, wait_waiter
from turnstore.clock import Clock
from turnstore.errors import LockTimeoutError
from turnstore.model import CreateTurnParams, Turn, TurnState
from turnstore.scope import AccessScope

__all__ = ["ChatKey", "Database", "Row", "Transaction", "chat_key"]

_Key = tuple[datetime, UUID]
#: A chat: ``(tenant_id, chat_id)``.
ChatKey = tuple[UUID, UUID]


def chat_key(turn: Turn | CreateTurnParams) -> ChatKey:
    """The chat a turn (or a new one) belongs to."""
    return (turn.tenant_id, turn.chat_id)


class Transaction:
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
        self.chat_writes: dict[ChatKey, set[UUID]] = {}
        self.locked: set[UUID] = set()
        self.chat_locks: set[ChatKey] = set()
        # Futures of the transactions waiting for this one to end.
        self.waiters: list[Waiter] = []
        self.waiting_on: Transaction | None = None
        self.wait_future: Waiter | None = None
        self.wait_seq = 0
        # Failed like a PostgreSQL transaction after an error: only a rollback is left.
        self.aborted = False


@dataclass(eq=False, slots=True)
class Row:
    """One row: its committed version, and at most one open transaction's pending version.

    ``holder`` is the transaction holding the row lock: the writer, or a
    ``find_latest_for_update`` locker that has not written it.
    """

    committed: Turn | None
    writer: Transaction | None = None
    pending: Turn | None = None
    holder: Transaction | None = None
    # The writer deletes the row: its pending version is "no row" (``pending`` is None).
    deleting: bool = False


def _latest_key(turn: Turn | None) -> _Key | None:
    """The row's entry in its chat's latest-turn index, if it has one (live rows)."""
    return rules.latest_sort_key(turn) if turn is not None and rules.is_live(turn) else None


def _orphan_key(turn: Turn | None) -> _Key | None:
    """The row's entry in the orphan order, if it has one (running, non-deleted rows)."""
    if turn is None or not rules.holds_running_slot(turn):
        return None
    return rules.orphan_sort_key(turn)


def _ended_key(turn: Turn | None) -> _Key | None:
    """The row's entry in the retention order, if it has one (terminal rows)."""
    if turn is None or turn.completed_at is None or not turn.state.is_terminal:
        return None
    return (turn.completed_at, turn.id)


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


class Database:
    """The rows, their indexes, the lock tables and the clock of one ``InMemoryStore``."""

    def __init__(self, clock: Clock, lock_timeout_secs: float | None = None) -> None:
        self.clock = clock
        self.lock_timeout_secs = lock_timeout_secs
        self.rows: dict[UUID, Row] = {}
        # Committed and pending inserts alike, as a unique index holds both.
        self.by_request: dict[tuple[UUID, UUID, UUID], UUID] = {}
        # Rows any of whose versions (committed or pending) holds the chat's running slot.
        self.running: dict[ChatKey, set[UUID]] = {}
        # Committed, non-deleted rows of each chat by (started_at, id).
        self.latest: dict[ChatKey, list[_Key]] = {}
        # Committed running, non-deleted rows by (last_progress_at, id).
        self.orphan_order: list[_Key] = []
        # Committed terminal rows by (completed_at, id): the retention order.
        self.ended: list[_Key] = []
        # Every row (committed or pending insert) of each chat and of each tenant.
        self.by_chat: dict[ChatKey, set[UUID]] = {}
        self.by_tenant: dict[UUID, set[UUID]] = {}
        self.chat_locks: dict[ChatKey, Transaction] = {}
        self.wait_seq = 0
        # Held by every statement; released only while a statement waits (``wait_for``).
        self.monitor = Monitor()
        # Called with the id of each turn whose committed version stops running, at the
        # commit that stops it (``InProcessFinalizeSignals`` wakes the stream's waiters).
        self.on_finalized: Callable[[UUID], None] | None = None

    # -- visibility ---------------------------------------------------------------------

    @staticmethod
    def visible(txn: Transaction, row: Row | None) -> Turn | None:
        """The version ``txn`` reads: its own pending write, else the committed one."""
        if row is None:
            return None
        if row.writer is txn:
            return row.pending
        return row.committed

    def get(self, txn: Transaction, turn_id: UUID) -> Turn | None:
        return self.visible(txn, self.rows.get(turn_id))

    # -- transactions -------------------------------------------------------------------

    def commit(self, txn: Transaction) -> None:
        for turn_id in txn.written:
            row = self.rows[turn_id]
            if row.deleting:
                self._drop(row)
                continue
            new = row.pending
            assert new is not None
            assert row.writer is txn
            old, row.committed, row.pending, row.writer = row.committed, new, None, None
            self._reindex_committed(old, new)
            self._refresh_running(turn_id, new, row)
            self._announce(old, new)
        self._release(txn)

    def _announce(self, old: Turn | None, new: Turn) -> None:
        """Tell ``on_finalized`` of a committed ``running -> terminal`` transition."""
        if (
            self.on_finalized is not None
            and old is not None
            and old.state is TurnState.RUNNING
            and new.state is not TurnState.RUNNING
        ):
            self.on_finalized(new.id)

    def autocommit_insert(self, turn: Turn) -> None:
        """Insert and commit ``turn`` at once: an INSERT in a transaction of its own that
        ``insert_blocker`` let through without waiting."""
        row = Row(committed=turn)
        self.rows[turn.id] = row
        self.by_request[(turn.tenant_id, turn.chat_id, turn.request_id)] = turn.id
        self._index_row(turn)
        self._reindex_committed(None, turn)
        self._refresh_running(turn.id, turn, row)

    def autocommit_update(self, row: Row, new: Turn) -> None:
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
        self._announce(old, new)

    def rollback(self, txn: Transaction) -> None:
        for turn_id in txn.written:
            row = self.rows[turn_id]
            assert row.writer is txn
            if row.deleting:
                row.deleting, row.writer = False, None
                continue
            assert row.pending is not None
            pending = row.pending
            row.pending, row.writer = None, None
            self._refresh_running(turn_id, pending, row)
            if row.committed is None:
                del self.rows[turn_id]
                del self.by_request[(pending.tenant_id, pending.chat_id, pending.request_id)]
                self._unindex_row(pending)
        self._release(txn)

    def _release(self, txn: Transaction) -> None:
        for turn_id in txn.locked:
            row = self.rows.get(turn_id)
            if row is not None and row.holder is txn:
                row.holder = None
        for chat in txn.chat_locks:
            if self.chat_locks.get(chat) is txn:
                del self.chat_locks[chat]
        txn.written.clear()
        txn.chat_writes.clear()
        txn.locked.clear()
        txn.chat_locks.clear()
        for waiter in txn.waiters:
            if not waiter.done():
                waiter.set_result(None)
        txn.waiters.clear()

    async def wait_for(self, txn: Transaction, holder: Transaction) -> None:
        """Wait until ``holder`` ends, as PostgreSQL waits on a row or advisory lock.

        A wait that closes a cycle is a deadlock. PostgreSQL breaks it by failing the
        waiter whose ``deadlock_timeout`` fires first, which is the one that has waited
        longest when the cycle closes within that timeout; so does this, at once, with
        the same ``DeadlockDetected`` error, leaving that transaction aborted. A wait longer
        than ``lock_timeout_secs`` fails with ``LockTimeoutError`` and aborts the waiter's
        transaction, as the PostgreSQL store's ``lock_timeout_secs`` does.
        """
        future = self.monitor.waiter()
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
            in_time = await wait_waiter(future, self.lock_timeout_secs)
        finally:
            txn.waiting_on, txn.wait_future = None, None
        if not in_time:
            # As PostgreSQL's lock_timeout: the statement fails, its transaction is aborted.
            if future in holder.waiters:
                holder.waiters.remove(future)
            txn.aborted = True
            raise LockTimeoutError(
                "gave up waiting for a lock after lock_timeout_secs "
                f"({self.lock_timeout_secs} s; turnstore in-memory store)"
            )

    async def lock_chat(self, txn: Transaction, chat: ChatKey) -> None:
        while (holder := self.chat_locks.get(chat)) is not None and holder is not txn:
            await self.wait_for(txn, holder)
        self.chat_locks[chat] = txn
        txn.chat_locks.add(chat)

    # -- writes -------------------------------------------------------------------------

    async def lock_row(
        self,
        txn: Transaction,
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

    def write(self, txn: Transaction, new: Turn) -> None:
        """Record ``new`` as ``txn``'s pending version of its row (locked by ``txn``)."""
        row = self.rows[new.id]
        row.pending, row.writer, row.holder = new, txn, txn
        txn.written.add(new.id)
        txn.locked.add(new.id)
        txn.chat_writes.setdefault(chat_key(new), set()).add(new.id)
        self._refresh_running(new.id, new, row)

    def insert_blocker(self, txn: Transaction, params: CreateTurnParams) -> Transaction | bool:
        """Would inserting ``params`` collide with a unique index?

        Returns the open transaction to wait for, ``True`` on a collision with a row this
        transaction sees, ``False`` when the insert may go ahead. The indexes are checked
        in PostgreSQL's order: primary key, ``(tenant_id, chat_id, request_id)``, one running
        turn per chat. A row another open transaction is writing is waited for whatever its
        pending version holds, as PostgreSQL waits on a tuple whose inserter or updater
        is still in progress.
        """
        key_holder = self.by_request.get((params.tenant_id, params.chat_id, params.request_id))
        for turn_id in (params.id, key_holder):
            row = self.rows.get(turn_id) if turn_id is not None else None
            if row is None:
                continue
            if row.deleting and row.writer is txn:
                # PostgreSQL would insert; the fake keeps one version per row and key.
                raise NotImplementedError(
                    "the in-memory store cannot insert a turn whose id or request id this "
                    "transaction deleted (purge_turns, erase_tenant_turns); PostgreSQL can"
                )
            if row.writer is not None and row.writer is not txn:
                return row.writer
            return True
        for turn_id in self.running.get(chat_key(params), ()):
            row = self.rows[turn_id]
            if row.writer is not None and row.writer is not txn:
                return row.writer
            turn = self.visible(txn, row)
            if turn is not None and rules.holds_running_slot(turn):
                return True
        return False

    def insert(self, txn: Transaction, turn: Turn) -> None:
        self.rows[turn.id] = Row(committed=None)
        self.by_request[(turn.tenant_id, turn.chat_id, turn.request_id)] = turn.id
        self._index_row(turn)
        self.write(txn, turn)

    def delete(self, txn: Transaction, turn_id: UUID) -> None:
        """``DELETE`` a committed row ``txn`` may lock (free, or already its own): gone for
        ``txn`` at once, for everyone at commit; a rollback keeps it."""
        row = self.rows[turn_id]
        assert row.holder is None or row.holder is txn
        if row.committed is None:
            # This transaction's own insert: the row never existed for anyone else.
            inserted = row.pending
            assert inserted is not None
            assert row.writer is txn
            del self.rows[turn_id]
            del self.by_request[(inserted.tenant_id, inserted.chat_id, inserted.request_id)]
            self._unindex_row(inserted)
            txn.written.discard(turn_id)
            txn.locked.discard(turn_id)
            txn.chat_writes.get(chat_key(inserted), set()).discard(turn_id)
            row.pending = None
            self._refresh_running(turn_id, inserted, row)
            return
        row.pending, row.writer, row.holder, row.deleting = None, txn, txn, True
        txn.written.add(turn_id)
        txn.locked.add(turn_id)
        txn.chat_writes.setdefault(chat_key(row.committed), set()).add(turn_id)

    def _drop(self, row: Row) -> None:
        """Remove a committed row and every index entry it has."""
        old = row.committed
        assert old is not None
        del self.rows[old.id]
        del self.by_request[(old.tenant_id, old.chat_id, old.request_id)]
        self._unindex_row(old)
        key = _latest_key(old)
        if key is not None:
            keys = self.latest[chat_key(old)]
            _remove_key(keys, key)
            if not keys:
                del self.latest[chat_key(old)]
        for order, key in ((self.orphan_order, _orphan_key(old)), (self.ended, _ended_key(old))):
            if key is not None:
                _remove_key(order, key)
        ids = self.running.get(chat_key(old))
        if ids is not None:
            ids.discard(old.id)
            if not ids:
                del self.running[chat_key(old)]

    def _index_row(self, turn: Turn) -> None:
        self.by_chat.setdefault(chat_key(turn), set()).add(turn.id)
        self.by_tenant.setdefault(turn.tenant_id, set()).add(turn.id)

    def _unindex_row(self, turn: Turn) -> None:
        chat = self.by_chat[chat_key(turn)]
        chat.discard(turn.id)
        if not chat:
            del self.by_chat[chat_key(turn)]
        tenant = self.by_tenant[turn.tenant_id]
        tenant.discard(turn.id)
        if not tenant:
            del self.by_tenant[turn.tenant_id]

    # -- reads --------------------------------------------------------------------------

    def running_turn(self, txn: Transaction, chat: ChatKey) -> Turn | None:
        for turn_id in self.running.get(chat, ()):
            turn = self.visible(txn, self.rows[turn_id])
            if turn is not None and rules.holds_running_slot(turn):
                return turn
        return None

    def latest_turn(self, txn: Transaction, scope: AccessScope, chat: ChatKey) -> Turn | None:
        """The latest non-deleted turn of the chat that ``scope`` permits, as ``txn`` sees it.

        Candidates: this transaction's own writes in the chat, and the newest committed
        entry of the chat's index that it did not write and the scope permits.
        """
        candidates: list[Turn] = []
        for turn_id in txn.chat_writes.get(chat, ()):
            turn = self.rows[turn_id].pending
            if turn is not None and scope.permits(turn):
                candidates.append(turn)
        for _, turn_id in reversed(self.latest.get(chat, ())):
            if turn_id in txn.written:
                continue
            turn = self.rows[turn_id].committed
            if turn is not None and scope.permits(turn):
                candidates.append(turn)
                break
        return rules.pick_latest(candidates)

    def live_turns_newest_first(
        self, txn: Transaction, scope: AccessScope, chat: ChatKey
    ) -> list[Turn]:
        """Every non-deleted turn of the chat ``scope`` permits, as ``txn`` sees it now,
        by ``(started_at, id)`` descending: the snapshot a ``FOR UPDATE`` scan walks."""
        turns = [
            turn
            for turn_id in txn.chat_writes.get(chat, ())
            if (turn := self.rows[turn_id].pending) is not None and rules.is_live(turn)
        ]
        for _, turn_id in self.latest.get(chat, ()):
            if turn_id not in txn.written:
                turn = self.rows[turn_id].committed
                assert turn is not None
                turns.append(turn)
        turns = [turn for turn in turns if scope.permits(turn)]
        turns.sort(key=rules.latest_sort_key, reverse=True)
        return turns

    async def select_latest_for_update(
        self, txn: Transaction, scope: AccessScope, chat: ChatKey
    ) -> Turn | None:
        """``SELECT ... ORDER BY started_at DESC, id DESC LIMIT 1 FOR UPDATE``, PostgreSQL's way.

        The newest row of the statement's snapshot is locked, waiting for its holder if
        need be; after a wait the row is re-checked as committed (EvalPlanQual), and if it
        was deleted meanwhile the scan goes on to the next row *of the old snapshot*, which
        may not be the true latest any more: the caller re-reads to catch that.
        """
        latest = self.latest_turn(txn, scope, chat)
        if latest is None:
            return None
        row = self.rows[latest.id]
        if row.holder is None or row.holder is txn:
            self.lock(txn, row, latest.id)
            return latest
        for candidate in self.live_turns_newest_first(txn, scope, chat):
            row = self.rows[candidate.id]
            while row.holder is not None and row.holder is not txn:
                await self.wait_for(txn, row.holder)
            current = self.visible(txn, row)
            if current is not None and rules.is_live(current):
                self.lock(txn, row, candidate.id)
                return current
        return None

    def purge_candidates(self, txn: Transaction, now: datetime, older_than_secs: int) -> list[Turn]:
        """Terminal turns that ended ``older_than_secs`` before ``now``, oldest first, as
        ``txn`` sees them (``rules.is_purgeable``), locked or not."""
        found = [
            turn
            for turn_id in txn.written
            if (turn := self.rows[turn_id].pending) is not None
            and rules.is_purgeable(turn, now, older_than_secs)
        ]
        cutoff = rules.purge_cutoff(now, older_than_secs)
        for completed_at, turn_id in self.ended:
            if completed_at > cutoff:
                break  # the order is by completed_at: nothing further is old enough
            if turn_id not in txn.written:
                turn = self.rows[turn_id].committed
                assert turn is not None
                found.append(turn)
        found.sort(key=lambda t: (t.completed_at, t.id))
        return found

    @staticmethod
    def lock(txn: Transaction, row: Row, turn_id: UUID) -> None:
        row.holder = txn
        txn.locked.add(turn_id)

    def orphan_candidates(
        self, txn: Transaction, now: datetime, timeout_secs: int, limit: int
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
                keys = self.latest[chat_key(new)]
                _remove_key(keys, old_latest)
                if not keys:
                    del self.latest[chat_key(new)]
            if new_latest is not None:
                _insert_key(self.latest.setdefault(chat_key(new), []), new_latest)
        for order, old_key, new_key in (
            (self.orphan_order, _orphan_key(old), _orphan_key(new)),
            (self.ended, _ended_key(old), _ended_key(new)),
        ):
            if old_key != new_key:
                if old_key is not None:
                    _remove_key(order, old_key)
                if new_key is not None:
                    _insert_key(order, new_key)

    def _refresh_running(self, turn_id: UUID, turn: Turn, row: Row) -> None:
        """Keep ``running`` listing the rows any version of which holds the running slot."""
        holds = any(
            version is not None and rules.holds_running_slot(version)
            for version in (row.committed, row.pending)
        )
        chat = chat_key(turn)
        ids = self.running.get(chat)
        if holds:
            if ids is None:
                self.running[chat] = {turn_id}
            else:
                ids.add(turn_id)
        elif ids is not None:
            ids.discard(turn_id)
            if not ids:
                del self.running[chat]
