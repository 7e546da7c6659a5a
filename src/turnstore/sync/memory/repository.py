# WARNING: this file is generated from src/turnstore/memory/repository.py by tools/async_to_sync.py; do not edit.
"""``InMemoryTurnRepository``: the repository methods over the fake's storage engine.

Every decision is a pure function of ``turnstore.rules`` or ``AccessScope.permits``; this
module turns each method into the statement it stands for (an INSERT, an UPDATE with its
WHERE, a SELECT) on ``turnstore.sync.memory.database``. Stored rows are never handed out:
callers get copies.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

from turnstore import rules
from turnstore.errors import TurnNotFoundError, TurnStoreError
from turnstore.memory.repository import (
    _any_row,
    _Change,
    _copy,
    _evolve,
    _ignoring_time,
    _inserted_turn,
    _keep_unless_given,
    _out,
    _Predicate,
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
    validate_orphan_args,
    validate_retention_args,
)
from turnstore.paging import DEFAULT_PAGE_LIMIT, TurnPage, check_page_limit, decode_cursor, page_of
from turnstore.scope import AccessScope, check_touch_targets
from turnstore.sync.memory.connection import (
    NO_WRITES,
    InMemoryConnection,
    idle_autocommit,
    statement,
)
from turnstore.sync.memory.database import Database, Transaction, chat_key
from turnstore.validation import check_optional_uuid

__all__ = ["InMemoryTurnRepository"]


class InMemoryTurnRepository:
    """``TurnRepository[InMemoryConnection]``: every method, decided by ``turnstore.rules``.

    Arguments are checked exactly as ``PostgresTurnRepository`` checks them, with the same
    errors. The repository holds no data; the runner names the store and the transaction.
    """

    def create_turn(
        self, runner: InMemoryConnection, scope: AccessScope, params: CreateTurnParams
    ) -> Turn:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.create_turn][]."""
        check_instance("params", params, CreateTurnParams)
        check_scope(scope)
        if (denied := rules.insert_refusal(params, permitted=scope.permits(params))) is not None:
            raise denied
        now: datetime | None = None
        if (db := idle_autocommit(runner)) is not None:
            now = db.clock.now()
            blocker = db.insert_blocker(NO_WRITES, params)
            if blocker is False:
                turn = _inserted_turn(params, now)
                db.autocommit_insert(turn)
                return _copy(turn)
            if blocker is True:
                raise self._insert_conflict(db, NO_WRITES, scope, params)
        with statement(runner) as (db, txn):
            if now is None:
                now = db.clock.now()
            while (blocker := db.insert_blocker(txn, params)) is not False:
                if blocker is True:
                    raise self._insert_conflict(db, txn, scope, params)
                db.wait_for(txn, blocker)
            turn = _inserted_turn(params, now)
            db.insert(txn, turn)
            return _copy(turn)

    @staticmethod
    def _insert_conflict(
        db: Database, txn: Transaction, scope: AccessScope, params: CreateTurnParams
    ) -> TurnStoreError:
        """The refusal ``rules.insert_refusal`` picks from the conflicts ``txn`` sees. Called
        only when ``insert_blocker`` found a conflicting row ``txn`` sees, so there is one."""
        existing_id = db.by_request.get((params.tenant_id, params.chat_id, params.request_id))
        existing = db.get(txn, existing_id) if existing_id is not None else None
        running = db.running_turn(txn, chat_key(params))
        refusal = rules.insert_refusal(
            params,
            id_taken=db.get(txn, params.id) is not None,
            existing_id=existing.id if existing is not None else None,
            running_id=running.id if running is not None else None,
            visible={t.id for t in (existing, running) if t is not None and scope.permits(t)},
        )
        assert refusal is not None, "insert_blocker saw a conflict that is not there"
        return refusal

    def find_by_chat_and_request_id(
        self,
        runner: InMemoryConnection,
        scope: AccessScope,
        tenant_id: UUID,
        chat_id: UUID,
        request_id: UUID,
    ) -> Turn | None:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.find_by_chat_and_request_id][]."""
        check_uuid("tenant_id", tenant_id)
        check_uuid("chat_id", chat_id)
        check_uuid("request_id", request_id)
        check_scope(scope)
        with statement(runner) as (db, txn):
            turn_id = db.by_request.get((tenant_id, chat_id, request_id))
            turn = db.get(txn, turn_id) if turn_id is not None else None
            return _out(turn) if turn is not None and scope.permits(turn) else None

    def find_running_by_chat_id(
        self, runner: InMemoryConnection, scope: AccessScope, tenant_id: UUID, chat_id: UUID
    ) -> Turn | None:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.find_running_by_chat_id][]."""
        check_uuid("tenant_id", tenant_id)
        check_uuid("chat_id", chat_id)
        check_scope(scope)
        with statement(runner) as (db, txn):
            turn = db.running_turn(txn, (tenant_id, chat_id))
            return _out(turn) if turn is not None and scope.permits(turn) else None

    def cas_update_state(
        self, runner: InMemoryConnection, scope: AccessScope, params: CasTerminalParams
    ) -> int:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.cas_update_state][]."""
        check_instance("params", params, CasTerminalParams)
        check_scope(scope)
        return _update_count(
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

    def cas_update_completed(
        self, runner: InMemoryConnection, scope: AccessScope, params: CasCompleteParams
    ) -> int:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.cas_update_completed][]."""
        check_instance("params", params, CasCompleteParams)
        check_scope(scope)
        return _update_count(
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

    def set_assistant_message_id(
        self,
        runner: InMemoryConnection,
        scope: AccessScope,
        turn_id: UUID,
        assistant_message_id: UUID,
    ) -> None:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.set_assistant_message_id][]."""
        check_uuid("turn_id", turn_id)
        check_uuid("assistant_message_id", assistant_message_id)
        check_scope(scope)
        written = _update(
            runner,
            scope,
            turn_id,
            _any_row,
            lambda _turn, now: {"assistant_message_id": assistant_message_id, "updated_at": now},
        )
        if written is None:
            raise TurnNotFoundError(turn_id)

    def soft_delete(
        self,
        runner: InMemoryConnection,
        scope: AccessScope,
        turn_id: UUID,
        replaced_by_request_id: UUID | None,
    ) -> None:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.soft_delete][]."""
        check_uuid("turn_id", turn_id)
        check_optional_uuid("replaced_by_request_id", replaced_by_request_id)
        check_scope(scope)

        def first_delete_only(turn: Turn, now: datetime) -> dict[str, object]:
            if not rules.is_live(turn):
                return {}
            return {
                "deleted_at": now,
                "replaced_by_request_id": replaced_by_request_id,
                "updated_at": now,
            }

        if _update(runner, scope, turn_id, _any_row, first_delete_only) is None:
            raise TurnNotFoundError(turn_id)

    def find_latest_turn(
        self, runner: InMemoryConnection, scope: AccessScope, tenant_id: UUID, chat_id: UUID
    ) -> Turn | None:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.find_latest_turn][]."""
        check_uuid("tenant_id", tenant_id)
        check_uuid("chat_id", chat_id)
        check_scope(scope)
        with statement(runner) as (db, txn):
            return _out(db.latest_turn(txn, scope, (tenant_id, chat_id)))

    def update_progress_at(
        self, runner: InMemoryConnection, scope: AccessScope, turn_id: UUID
    ) -> int:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.update_progress_at][]."""
        check_uuid("turn_id", turn_id)
        check_scope(scope)
        return _update_count(
            runner,
            scope,
            turn_id,
            _ignoring_time(rules.progress_update_applies),
            lambda _turn, now: {"last_progress_at": now, "updated_at": now},
        )

    def touch_turns(
        self, runner: InMemoryConnection, targets: Sequence[tuple[AccessScope, UUID]]
    ) -> list[bool]:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.touch_turns][].

        One statement: one clock reading, the rows locked in the order of their first
        target (waiting, as PostgreSQL's UPDATE does, for a row another transaction holds),
        each row checked against the scopes of its own targets with ``AccessScope.permits``.
        """
        check_touch_targets(targets)
        touched = [False] * len(targets)
        if not targets:
            return touched
        positions: dict[UUID, list[int]] = {}
        for position, (_scope, turn_id) in enumerate(targets):
            positions.setdefault(turn_id, []).append(position)
        with statement(runner) as (db, txn):
            now = db.clock.now()
            for turn_id, mine in positions.items():
                scopes = [targets[p][0] for p in mine]

                def applies(turn: Turn, scopes: list[AccessScope] = scopes) -> bool:
                    return rules.progress_update_applies(turn) and any(
                        s.permits(turn) for s in scopes
                    )

                turn = db.lock_row(txn, turn_id, None, applies)
                if turn is None:
                    continue
                new = _evolve(turn, {"last_progress_at": now, "updated_at": now})
                db.write(txn, new)
                for p in mine:
                    touched[p] = targets[p][0].permits(new)
        return touched

    def find_orphan_candidates(
        self, runner: InMemoryConnection, timeout_secs: int, limit: int
    ) -> list[Turn]:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.find_orphan_candidates][]."""
        validate_orphan_args(timeout_secs, limit)
        with statement(runner) as (db, txn):
            now = db.clock.now()
            return [_copy(t) for t in db.orphan_candidates(txn, now, timeout_secs, limit)]

    def cas_finalize_orphan(
        self,
        runner: InMemoryConnection,
        turn_id: UUID,
        timeout_secs: int,
        *,
        tenant_id: UUID | None = None,
    ) -> int:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.cas_finalize_orphan][]."""
        check_uuid("turn_id", turn_id)
        validate_orphan_args(timeout_secs)
        check_optional_uuid("tenant_id", tenant_id)
        return _update_count(
            runner,
            None,
            turn_id,
            lambda turn, now: (
                (tenant_id is None or turn.tenant_id == tenant_id)
                and rules.is_orphan(turn, now, timeout_secs)
            ),
            lambda _turn, now: {
                "state": TurnState.FAILED,
                "error_code": rules.ORPHAN_ERROR_CODE,
                "completed_at": now,
                "updated_at": now,
            },
        )

    def find_latest_for_update(
        self, runner: InMemoryConnection, scope: AccessScope, tenant_id: UUID, chat_id: UUID
    ) -> Turn | None:
        """Take the chat's lock, lock the latest turn, then re-read the latest: when a
        transaction that bypassed the chat lock replaced the row waited on, go again
        (as the PostgreSQL backend does, a bounded number of times).

        The chat lock is keyed by tenant and chat and taken only for a chat the scope can
        see: one whose tenant it permits as a whole, or one where it sees a live turn."""
        check_uuid("tenant_id", tenant_id)
        check_uuid("chat_id", chat_id)
        check_scope(scope)
        chat = (tenant_id, chat_id)
        with statement(runner) as (db, txn):
            if scope.permits_tenant(tenant_id) or db.latest_turn(txn, scope, chat) is not None:
                db.lock_chat(txn, chat)
            turn: Turn | None = None
            for _ in range(rules.MAX_RELOCKS):
                turn = db.select_latest_for_update(txn, scope, chat)
                latest = db.latest_turn(txn, scope, chat)
                if (turn.id if turn else None) == (latest.id if latest else None):
                    break
            return _out(turn)

    def update_preflight_fields(
        self, runner: InMemoryConnection, scope: AccessScope, params: UpdatePreflightParams
    ) -> int:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.update_preflight_fields][]."""
        check_instance("params", params, UpdatePreflightParams)
        check_scope(scope)
        fields = params.model_dump(exclude={"turn_id"})
        return _update_count(
            runner,
            scope,
            params.turn_id,
            _ignoring_time(rules.preflight_update_applies),
            lambda _turn, now: {**fields, "updated_at": now},
        )

    def increment_tool_calls(
        self, runner: InMemoryConnection, scope: AccessScope, turn_id: UUID, tool: ToolCallType
    ) -> None:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.increment_tool_calls][]."""
        check_uuid("turn_id", turn_id)
        counter = rules.check_tool(tool).column
        check_scope(scope)
        _update(
            runner,
            scope,
            turn_id,
            _ignoring_time(rules.tool_increment_applies),
            lambda turn, now: {counter: getattr(turn, counter) + 1, "updated_at": now},
        )

    def get_turn(
        self, runner: InMemoryConnection, scope: AccessScope, turn_id: UUID
    ) -> Turn | None:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.get_turn][]."""
        check_uuid("turn_id", turn_id)
        check_scope(scope)
        with statement(runner) as (db, txn):
            turn = db.get(txn, turn_id)
            return _out(turn) if turn is not None and scope.permits(turn) else None

    def list_turns(
        self,
        runner: InMemoryConnection,
        scope: AccessScope,
        tenant_id: UUID,
        chat_id: UUID,
        *,
        limit: int = DEFAULT_PAGE_LIMIT,
        before: str | None = None,
        include_deleted: bool = False,
    ) -> TurnPage:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.list_turns][]."""
        check_uuid("tenant_id", tenant_id)
        check_uuid("chat_id", chat_id)
        check_page_limit(limit)
        check_instance("include_deleted", include_deleted, bool)
        key = decode_cursor(before)
        check_scope(scope)
        with statement(runner) as (db, txn):
            found = [
                turn
                for turn_id in db.by_chat.get((tenant_id, chat_id), ())
                if (turn := db.get(txn, turn_id)) is not None
                and turn.tenant_id == tenant_id
                and (include_deleted or rules.is_live(turn))
                and (rules.latest_sort_key(turn) < key)
                and scope.permits(turn)
            ]
            found.sort(key=rules.latest_sort_key, reverse=True)
            return page_of([_copy(t) for t in found[: limit + 1]], limit)

    def purge_turns(self, runner: InMemoryConnection, older_than_secs: int, limit: int) -> int:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.purge_turns][]."""
        validate_retention_args(older_than_secs, limit)
        with statement(runner) as (db, txn):
            now = db.clock.now()
            batch = [
                turn.id
                for turn in db.purge_candidates(txn, now, older_than_secs)
                if (holder := db.rows[turn.id].holder) is None or holder is txn
            ][:limit]
            for turn_id in batch:
                db.delete(txn, turn_id)
            return len(batch)

    def count_purgeable(self, runner: InMemoryConnection, older_than_secs: int) -> int:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.count_purgeable][]."""
        validate_retention_args(older_than_secs)
        with statement(runner) as (db, txn):
            return len(db.purge_candidates(txn, db.clock.now(), older_than_secs))

    def erase_tenant_turns(self, runner: InMemoryConnection, tenant_id: UUID, limit: int) -> int:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.erase_tenant_turns][]."""
        check_uuid("tenant_id", tenant_id)
        validate_retention_args(None, limit)
        with statement(runner) as (db, txn):
            erased = 0
            for turn_id in sorted(db.by_tenant.get(tenant_id, ())):
                if erased >= limit:
                    break
                turn = db.lock_row(txn, turn_id, None, lambda t: t.tenant_id == tenant_id)
                if turn is None:
                    continue
                db.delete(txn, turn_id)
                erased += 1
            return erased

    def count_tenant_turns(self, runner: InMemoryConnection, tenant_id: UUID) -> int:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.count_tenant_turns][]."""
        check_uuid("tenant_id", tenant_id)
        with statement(runner) as (db, txn):
            return sum(
                1 for turn_id in db.by_tenant.get(tenant_id, ()) if db.get(txn, turn_id) is not None
            )


def _update(
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
    if (db := idle_autocommit(runner)) is not None:
        row = db.rows.get(turn_id)
        now = db.clock.now()
        if row is None or row.holder is None:
            turn = None if row is None else row.committed
            if (
                turn is None
                or (scope is not None and (not scope.permits(turn)))
                or (not applies(turn, now))
            ):
                return None
            assert row is not None
            new = _evolve(turn, change(turn, now))
            db.autocommit_update(row, new)
            return new
    with statement(runner) as (db, txn):
        if now is None:
            now = db.clock.now()
        turn = db.lock_row(txn, turn_id, scope, lambda t: applies(t, now))
        if turn is None:
            return None
        new = _evolve(turn, change(turn, now))
        db.write(txn, new)
        return new


def _update_count(
    runner: InMemoryConnection,
    scope: AccessScope | None,
    turn_id: UUID,
    applies: _Predicate,
    change: _Change,
) -> int:
    """``_update`` reporting rows affected, as the CAS methods do."""
    return 0 if _update(runner, scope, turn_id, applies, change) is None else 1
