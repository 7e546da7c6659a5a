# WARNING: this file is generated from src/turnstore/postgres/repository.py by tools/async_to_sync.py; do not edit.
"""``PostgresTurnRepository``: the ``TurnRepository`` protocol on PostgreSQL.

The runner is the caller's ``psycopg.Connection``, in or out of a transaction the
caller opened. The statements are those of ``turnstore.postgres.statements``, rendered once
per schema; the scope of each call is compiled once per scope object
(``turnstore.postgres.scope``).

No method lets a statement fail on purpose, so a typed error leaves the caller's
transaction usable: inserts use ``ON CONFLICT DO NOTHING`` and then classify the refusal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

import psycopg

from turnstore import rules
from turnstore.errors import GenerationInProgressError, TurnNotFoundError
from turnstore.model import (
    CasCompleteParams,
    CasTerminalParams,
    CreateTurnParams,
    ToolCallType,
    Turn,
    UpdatePreflightParams,
    check_instance,
    check_uuid,
    validate_orphan_args,
    validate_retention_args,
)
from turnstore.paging import DEFAULT_PAGE_LIMIT, TurnPage, check_page_limit, decode_cursor, page_of
from turnstore.postgres import statements as q
from turnstore.postgres.errors import driver_errors, raise_translated
from turnstore.postgres.repository import (
    _turn_rows,
)
from turnstore.postgres.scope import SCOPE_CACHE_SIZE, CompiledScope, ScopedStatement
from turnstore.postgres.statements import (
    DEFAULT_SCHEMA,
    StatementBounds,
    render,
    render_scoped,
)
from turnstore.rules import ORPHAN_ERROR_CODE
from turnstore.scope import AccessScope, check_touch_targets
from turnstore.validation import check_optional_uuid, check_schema_name, check_timeout_ms

__all__ = ["PostgresTurnRepository"]
Connection = psycopg.Connection[Any]


class PostgresTurnRepository:
    """``TurnRepository`` on PostgreSQL; the runner is a ``psycopg.Connection``.

    Stateless apart from the statements rendered for ``schema``: one instance can serve any
    number of connections and tasks at once.

    Args:
        schema: The schema holding ``chat_turns``.
        lock_timeout_secs: Bound on every wait for a chat or row lock, set per transaction
            by the statements that may wait (``LockTimeoutError`` past it); ``None`` leaves
            the server's ``lock_timeout``. Whole milliseconds, at least 1.
        statement_timeout_secs: Bound on the statements of a transaction that follow the
            first one turnstore sends in it (``StatementTimeoutError``); ``None`` leaves
            the server's ``statement_timeout`` (docs/deploying.md, *Timeouts*).
    """

    __slots__ = (
        "_cas_completed",
        "_cas_state",
        "_classify",
        "_count_purgeable",
        "_count_tenant",
        "_create_head",
        "_create_visible_head",
        "_erase_heads",
        "_erase_tenant",
        "_finalize_orphan",
        "_finalize_tenant_orphan",
        "_find_by_request",
        "_find_latest",
        "_find_orphans",
        "_find_running",
        "_get_turn",
        "_increment",
        "_insert",
        "_latest_for_update",
        "_latest_id",
        "_list_all",
        "_list_live",
        "_lock_chat",
        "_lock_visible_chat",
        "_purge",
        "_scopes",
        "_set_assistant_message",
        "_set_bounds",
        "_soft_delete",
        "_touch_turns",
        "_update_preflight",
        "_update_progress",
        "bounds",
        "schema",
    )

    def __init__(
        self,
        schema: str = DEFAULT_SCHEMA,
        *,
        lock_timeout_secs: float | None = None,
        statement_timeout_secs: float | None = None,
    ) -> None:
        self.schema = check_schema_name(schema)
        self.bounds = StatementBounds(
            lock_timeout_ms=check_timeout_ms("lock_timeout_secs", lock_timeout_secs),
            statement_timeout_ms=check_timeout_ms("statement_timeout_secs", statement_timeout_secs),
        )
        self._set_bounds = self.bounds.statement
        bounds = self.bounds.select_items
        self._insert = render(q.INSERT_TURN, schema, bounds=bounds)
        self._classify = render_scoped(q.CLASSIFY_CONFLICT, schema, bounds=bounds)
        self._find_by_request = render_scoped(q.FIND_BY_REQUEST, schema, bounds=bounds)
        self._find_running = render_scoped(q.FIND_RUNNING, schema, bounds=bounds)
        self._cas_state = render_scoped(q.CAS_STATE, schema, bounds=bounds)
        self._cas_completed = render_scoped(q.CAS_COMPLETED, schema, bounds=bounds)
        self._set_assistant_message = render_scoped(q.SET_ASSISTANT_MESSAGE, schema, bounds=bounds)
        self._soft_delete = render_scoped(q.SOFT_DELETE, schema, bounds=bounds)
        self._find_latest = render_scoped(q.FIND_LATEST, schema, bounds=bounds)
        self._update_progress = render_scoped(q.UPDATE_PROGRESS, schema, bounds=bounds)
        self._touch_turns = render(q.TOUCH_TURNS, schema, bounds=bounds)
        self._find_orphans = render(q.FIND_ORPHANS, schema, bounds=bounds)
        self._finalize_orphan = render(q.FINALIZE_ORPHAN, schema, bounds=bounds)
        self._finalize_tenant_orphan = render(q.FINALIZE_TENANT_ORPHAN, schema, bounds=bounds)
        self._create_head = render(q.CREATE_CHAT_HEAD, schema)
        self._lock_chat = render(q.LOCK_CHAT, schema)
        self._create_visible_head = render_scoped(q.CREATE_VISIBLE_CHAT_HEAD, schema)
        self._lock_visible_chat = render_scoped(q.LOCK_VISIBLE_CHAT, schema, bounds=bounds)
        self._latest_for_update = render_scoped(q.LATEST_FOR_UPDATE, schema, bounds=bounds)
        self._latest_id = render_scoped(q.LATEST_ID, schema, bounds=bounds)
        self._update_preflight = render_scoped(q.UPDATE_PREFLIGHT, schema, bounds=bounds)
        self._increment = {
            tool: render_scoped(q.INCREMENT_TOOL, schema, bounds=bounds, counter=tool.column)
            for tool in ToolCallType
        }
        self._get_turn = render_scoped(q.GET_TURN, schema, bounds=bounds)
        self._list_live = render_scoped(q.LIST_TURNS, schema, bounds=bounds)
        self._list_all = render_scoped(q.LIST_TURNS_ALL, schema, bounds=bounds)
        self._purge = render(q.PURGE_TURNS, schema, bounds=bounds)
        self._count_purgeable = render(q.COUNT_PURGEABLE, schema, bounds=bounds)
        self._erase_tenant = render(q.ERASE_TENANT, schema, bounds=bounds)
        self._erase_heads = render(q.ERASE_TENANT_HEADS, schema)
        self._count_tenant = render(q.COUNT_TENANT, schema, bounds=bounds)
        self._scopes: dict[int, CompiledScope] = {}

    def __repr__(self) -> str:
        return f"PostgresTurnRepository(schema={self.schema!r}, bounds={self.bounds!r})"

    def _compiled(self, scope: AccessScope) -> CompiledScope:
        """``scope`` compiled (``compile_scope``), from the cache when this very object was
        compiled before; an ``InvalidParameterError`` for anything but an ``AccessScope``."""
        compiled = self._scopes.get(id(scope))
        if compiled is not None and compiled.scope is scope:
            return compiled
        compiled = CompiledScope(scope)
        if len(self._scopes) >= SCOPE_CACHE_SIZE:
            self._scopes.clear()
        self._scopes[id(scope)] = compiled
        return compiled

    def _one(
        self,
        conn: Connection,
        statement: ScopedStatement,
        scope: AccessScope,
        head: tuple[Any, ...],
    ) -> Turn | None:
        """Run a scoped SELECT; ``head`` are the parameters before the scope's."""
        compiled = self._scopes.get(id(scope))
        if compiled is None or compiled.scope is not scope:
            compiled = self._compiled(scope)
        query = compiled.rendered.get(statement) or compiled.statement(statement)
        try:
            cur = conn.cursor(row_factory=_turn_rows)
            cur.execute(query, head + compiled.params)
            return cur.fetchone()
        except Exception as exc:
            raise_translated(exc)
            raise

    def _count(
        self,
        conn: Connection,
        statement: ScopedStatement,
        scope: AccessScope,
        head: tuple[Any, ...],
    ) -> int:
        """Run a scoped UPDATE; return the rows it changed."""
        compiled = self._scopes.get(id(scope))
        if compiled is None or compiled.scope is not scope:
            compiled = self._compiled(scope)
        query = compiled.rendered.get(statement) or compiled.statement(statement)
        try:
            cur = conn.execute(query, head + compiled.params)
        except Exception as exc:
            raise_translated(exc)
            raise
        return cur.rowcount

    def create_turn(self, runner: Connection, scope: AccessScope, params: CreateTurnParams) -> Turn:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.create_turn][]."""
        check_instance("params", params, CreateTurnParams)
        compiled = self._compiled(scope)
        refusal = rules.insert_refusal(params, permitted=scope.permits(params))
        if refusal is not None:
            raise refusal
        values = (
            params.id,
            params.tenant_id,
            params.chat_id,
            params.request_id,
            params.requester_type.value,
            params.requester_user_id,
            params.provider_name,
            params.reserve_tokens,
            params.max_output_tokens_applied,
            params.reserved_credits_micro,
            params.policy_version_applied,
            params.effective_model,
            params.minimal_generation_floor_applied,
            params.web_search_enabled,
            params.request_fingerprint,
            params.id,
        )
        with driver_errors:
            for _ in range(rules.MAX_INSERT_ATTEMPTS):
                inserted = runner.cursor(row_factory=_turn_rows)
                inserted.execute(self._insert, values)
                turn = inserted.fetchone()
                if turn is not None:
                    return turn
                classify_params = (
                    params.id,
                    params.tenant_id,
                    params.chat_id,
                    params.request_id,
                    params.tenant_id,
                    params.chat_id,
                    params.tenant_id,
                    params.chat_id,
                    params.request_id,
                    *compiled.params,
                )
                cur = runner.cursor().execute(compiled.statement(self._classify), classify_params)
                row = cur.fetchone()
                assert row is not None
                id_taken, existing_id, running_id, permitted = row
                refusal = rules.insert_refusal(
                    params,
                    id_taken=id_taken,
                    existing_id=existing_id,
                    running_id=running_id,
                    visible=permitted,
                )
                if refusal is not None:
                    raise refusal
        raise GenerationInProgressError(params.chat_id)

    def find_by_chat_and_request_id(
        self,
        runner: Connection,
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
        head = (tenant_id, chat_id, request_id)
        return self._one(runner, self._find_by_request, scope, head)

    def find_running_by_chat_id(
        self, runner: Connection, scope: AccessScope, tenant_id: UUID, chat_id: UUID
    ) -> Turn | None:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.find_running_by_chat_id][]."""
        check_uuid("tenant_id", tenant_id)
        check_uuid("chat_id", chat_id)
        return self._one(runner, self._find_running, scope, (tenant_id, chat_id))

    def cas_update_state(
        self, runner: Connection, scope: AccessScope, params: CasTerminalParams
    ) -> int:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.cas_update_state][]."""
        check_instance("params", params, CasTerminalParams)
        head = (
            params.state.value,
            params.error_code,
            params.error_detail,
            params.assistant_message_id,
            params.provider_response_id,
            params.turn_id,
        )
        return self._count(runner, self._cas_state, scope, head)

    def cas_update_completed(
        self, runner: Connection, scope: AccessScope, params: CasCompleteParams
    ) -> int:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.cas_update_completed][]."""
        check_instance("params", params, CasCompleteParams)
        head = (params.assistant_message_id, params.provider_response_id, params.turn_id)
        return self._count(runner, self._cas_completed, scope, head)

    def set_assistant_message_id(
        self, runner: Connection, scope: AccessScope, turn_id: UUID, assistant_message_id: UUID
    ) -> None:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.set_assistant_message_id][]."""
        check_uuid("turn_id", turn_id)
        check_uuid("assistant_message_id", assistant_message_id)
        head = (assistant_message_id, turn_id)
        if self._count(runner, self._set_assistant_message, scope, head) == 0:
            raise TurnNotFoundError(turn_id)

    def soft_delete(
        self,
        runner: Connection,
        scope: AccessScope,
        turn_id: UUID,
        replaced_by_request_id: UUID | None,
    ) -> None:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.soft_delete][]."""
        check_uuid("turn_id", turn_id)
        check_optional_uuid("replaced_by_request_id", replaced_by_request_id)
        head = (replaced_by_request_id, turn_id)
        if self._count(runner, self._soft_delete, scope, head) == 0:
            raise TurnNotFoundError(turn_id)

    def find_latest_turn(
        self, runner: Connection, scope: AccessScope, tenant_id: UUID, chat_id: UUID
    ) -> Turn | None:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.find_latest_turn][]."""
        check_uuid("tenant_id", tenant_id)
        check_uuid("chat_id", chat_id)
        return self._one(runner, self._find_latest, scope, (tenant_id, chat_id))

    def update_progress_at(self, runner: Connection, scope: AccessScope, turn_id: UUID) -> int:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.update_progress_at][]."""
        check_uuid("turn_id", turn_id)
        return self._count(runner, self._update_progress, scope, (turn_id,))

    def touch_turns(
        self, runner: Connection, targets: Sequence[tuple[AccessScope, UUID]]
    ) -> list[bool]:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.touch_turns][]."""
        check_touch_targets(targets)
        ords: list[int] = []
        ids: list[UUID] = []
        tenants: list[UUID | None] = []
        for ord_, (scope, turn_id) in enumerate(targets):
            permitted = scope.tenants_for_turn(turn_id)
            if permitted is None:
                ords.append(ord_)
                ids.append(turn_id)
                tenants.append(None)
                continue
            for tenant_id in permitted:
                ords.append(ord_)
                ids.append(turn_id)
                tenants.append(tenant_id)
        touched = [False] * len(targets)
        if not ords:
            return touched
        with driver_errors:
            cur = runner.execute(
                self._touch_turns, (ords, ids, tenants, list(set(ids))), binary=True
            )
            for (ord_,) in cur.fetchall():
                touched[ord_] = True
        return touched

    def find_orphan_candidates(
        self, runner: Connection, timeout_secs: int, limit: int
    ) -> list[Turn]:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.find_orphan_candidates][]."""
        validate_orphan_args(timeout_secs, limit)
        with driver_errors:
            cur = runner.cursor(row_factory=_turn_rows)
            cur.execute(self._find_orphans, (timeout_secs, limit))
            return cur.fetchall()

    def cas_finalize_orphan(
        self, runner: Connection, turn_id: UUID, timeout_secs: int, *, tenant_id: UUID | None = None
    ) -> int:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.cas_finalize_orphan][]."""
        check_uuid("turn_id", turn_id)
        validate_orphan_args(timeout_secs)
        check_optional_uuid("tenant_id", tenant_id)
        with driver_errors:
            if tenant_id is None:
                cur = runner.execute(
                    self._finalize_orphan, (ORPHAN_ERROR_CODE, turn_id, timeout_secs)
                )
            else:
                cur = runner.execute(
                    self._finalize_tenant_orphan,
                    (ORPHAN_ERROR_CODE, turn_id, tenant_id, timeout_secs),
                )
        return cur.rowcount

    def find_latest_for_update(
        self, runner: Connection, scope: AccessScope, tenant_id: UUID, chat_id: UUID
    ) -> Turn | None:
        """Serialize the chat with a row lock on its ``chat_heads`` row (created on first
        use), then read and lock its latest turn in a new statement (a fresh snapshot taken
        after the wait), then read the latest id once more: if a transaction that bypassed
        the chat lock replaced the turn we waited on, ``FOR UPDATE`` hands back an older
        row, and we go again.

        All four statements go out in one round trip (pipeline mode). The chat lock is keyed
        by tenant and chat, lives in the tenant's partition, and is taken only for a chat
        the scope can see: at once when the scope permits the whole tenant (a pure check),
        else only when the lock statements themselves find a live turn of the chat in scope
        (docs/design.md, *The latest-turn lock*).
        """
        check_uuid("tenant_id", tenant_id)
        check_uuid("chat_id", chat_id)
        compiled = self._compiled(scope)
        select = compiled.statement(self._latest_for_update)
        verify = compiled.statement(self._latest_id)
        select_params = (tenant_id, chat_id, *compiled.params)
        lock: tuple[str, str] | None
        lock_params: tuple[Any, ...]
        if scope.permits_tenant(tenant_id):
            lock, lock_params = ((self._create_head, self._lock_chat), (tenant_id, chat_id))
        elif scope.is_deny_all:
            lock, lock_params = (None, ())
        else:
            lock = (
                compiled.statement(self._create_visible_head),
                compiled.statement(self._lock_visible_chat),
            )
            lock_params = (tenant_id, chat_id, tenant_id, chat_id, *compiled.params)
        with driver_errors:
            turn: Turn | None = None
            for _ in range(rules.MAX_RELOCKS):
                locked = runner.cursor(row_factory=_turn_rows)
                check = runner.cursor()
                with runner.pipeline():
                    if self._set_bounds is not None:
                        runner.execute(self._set_bounds)
                    if lock is not None:
                        runner.execute(lock[0], lock_params)
                        runner.execute(lock[1], lock_params)
                    locked.execute(select, select_params)
                    check.execute(verify, select_params)
                turn = locked.fetchone()
                latest = check.fetchone()
                latest_id = latest[0] if latest is not None else None
                if (turn.id if turn is not None else None) == latest_id:
                    return turn
                lock = None
            return turn

    def update_preflight_fields(
        self, runner: Connection, scope: AccessScope, params: UpdatePreflightParams
    ) -> int:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.update_preflight_fields][]."""
        check_instance("params", params, UpdatePreflightParams)
        head = (
            params.reserve_tokens,
            params.max_output_tokens_applied,
            params.reserved_credits_micro,
            params.policy_version_applied,
            params.effective_model,
            params.minimal_generation_floor_applied,
            params.turn_id,
        )
        return self._count(runner, self._update_preflight, scope, head)

    def increment_tool_calls(
        self, runner: Connection, scope: AccessScope, turn_id: UUID, tool: ToolCallType
    ) -> None:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.increment_tool_calls][]."""
        check_uuid("turn_id", turn_id)
        statement = self._increment[rules.check_tool(tool)]
        self._count(runner, statement, scope, (turn_id,))

    def get_turn(self, runner: Connection, scope: AccessScope, turn_id: UUID) -> Turn | None:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.get_turn][]."""
        check_uuid("turn_id", turn_id)
        return self._one(runner, self._get_turn, scope, (turn_id,))

    def list_turns(
        self,
        runner: Connection,
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
        started_at, turn_id = decode_cursor(before)
        compiled = self._compiled(scope)
        statement = self._list_all if include_deleted else self._list_live
        query = compiled.statement(statement)
        params = (chat_id, tenant_id, started_at, turn_id, *compiled.params, limit + 1)
        with driver_errors:
            cur = runner.cursor(row_factory=_turn_rows)
            cur.execute(query, params)
            rows = cur.fetchall()
        return page_of(rows, limit)

    def purge_turns(self, runner: Connection, older_than_secs: int, limit: int) -> int:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.purge_turns][]."""
        validate_retention_args(older_than_secs, limit)
        with driver_errors:
            cur = runner.execute(self._purge, (older_than_secs, limit))
        return cur.rowcount

    def count_purgeable(self, runner: Connection, older_than_secs: int) -> int:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.count_purgeable][]."""
        validate_retention_args(older_than_secs)
        return self._scalar(runner, self._count_purgeable, (older_than_secs,))

    def erase_tenant_turns(self, runner: Connection, tenant_id: UUID, limit: int) -> int:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.erase_tenant_turns][]."""
        check_uuid("tenant_id", tenant_id)
        validate_retention_args(None, limit)
        with driver_errors:
            cur = runner.execute(self._erase_tenant, (tenant_id, limit))
            if cur.rowcount < limit:
                runner.execute(self._erase_heads, (tenant_id,))
        return cur.rowcount

    def count_tenant_turns(self, runner: Connection, tenant_id: UUID) -> int:
        """The protocol method, documented at
        [turnstore.repository.TurnRepository.count_tenant_turns][]."""
        check_uuid("tenant_id", tenant_id)
        return self._scalar(runner, self._count_tenant, (tenant_id,))

    @staticmethod
    def _scalar(runner: Connection, query: str, params: tuple[Any, ...]) -> int:
        with driver_errors:
            cur = runner.execute(query, params)
            row = cur.fetchone()
        assert row is not None
        return int(row[0])
