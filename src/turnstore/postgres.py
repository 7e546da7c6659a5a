"""The PostgreSQL backend: ``PostgresTurnRepository``, migrations and ``PostgresStore``.

Every statement is plain SQL kept in module constants and rendered once per schema, with
the schema quoted as an identifier; values always travel as bound parameters. The runner is
the caller's ``psycopg.AsyncConnection``, in or out of a transaction the caller opened.

Time is the database's: each statement reads ``clock_timestamp()`` once (in a CTE) and
writes that one value everywhere, so a turn created and completed in one transaction still
has ``started_at <= completed_at``, and later statements always get later times.

No method lets a statement fail on purpose, so a typed error leaves the caller's
transaction usable: inserts use ``ON CONFLICT DO NOTHING`` and then classify the refusal.

Advisory lock classes (two-key form ``pg_advisory[_xact]_lock(class, key)``) used here;
a host should not use these class ids for its own locks:

- ``CHAT_LOCK_CLASS`` (1414742856, ASCII ``TSCH``): serializes ``find_latest_for_update``
  per chat, key ``hashtext(chat_id::text)``, held until the transaction ends.
- ``MIGRATION_LOCK_CLASS`` (1414745415, ASCII ``TSMG``): serializes ``migrate`` per schema,
  key ``hashtext(schema)``, held for the duration of the run.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any
from uuid import UUID

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.errors import UniqueViolation
from psycopg.pq import TransactionStatus
from psycopg.rows import RowMaker

from turnstore.errors import (
    DuplicateRequestError,
    DuplicateTurnIdError,
    GenerationInProgressError,
    InvalidParameterError,
    MigrationError,
    SchemaMismatchError,
    ScopeDeniedError,
    StoreUnavailableError,
    TurnNotFoundError,
    TurnStoreError,
)
from turnstore.model import (
    CasCompleteParams,
    CasTerminalParams,
    CreateTurnParams,
    RequesterType,
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
from turnstore.rules import ORPHAN_ERROR_CODE
from turnstore.scope import PROPERTY_COLUMNS, AccessScope, FilterOp

__all__ = [
    "CHAT_LOCK_CLASS",
    "DEFAULT_SCHEMA",
    "MIGRATION_LOCK_CLASS",
    "Migration",
    "PostgresStore",
    "PostgresTurnRepository",
    "SchemaStatus",
    "check_schema",
    "compile_scope",
    "migrate",
    "migration_files",
    "schema_sql",
    "validate_orphan_args",
]

DEFAULT_SCHEMA = "turnstore"

#: Advisory lock class of the per-chat lock taken by ``find_latest_for_update`` ("TSCH").
CHAT_LOCK_CLASS = 0x54534348
#: Advisory lock class of the per-schema lock taken by ``migrate`` ("TSMG").
MIGRATION_LOCK_CLASS = 0x54534D47

Connection = psycopg.AsyncConnection[Any]
Pool = psycopg_pool.AsyncConnectionPool[Any]

# ---------------------------------------------------------------------------------------
# Driver errors: one boundary
# ---------------------------------------------------------------------------------------

# SQLSTATEs meaning "the server went away or refused us" (class 08 is matched by prefix).
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


def _unique_violation_error(exc: UniqueViolation) -> TurnStoreError | None:
    """The typed error for a unique violation of ``chat_turns``, read off the constraint
    name and the key in the error detail; ``None`` when it is not one of ours."""
    ids = [UUID(m) for m in _UUID_RE.findall(exc.diag.message_detail or "")]
    constraint = exc.diag.constraint_name
    if constraint == "chat_turns_pkey" and len(ids) == 1:
        return DuplicateTurnIdError(ids[0])
    if constraint == "chat_turns_chat_request_key" and len(ids) == 2:
        return DuplicateRequestError(ids[0], ids[1])
    if constraint == "chat_turns_one_running_per_chat" and len(ids) == 1:
        return GenerationInProgressError(ids[0])
    return None


def _translate(exc: BaseException) -> TurnStoreError | None:
    """The turnstore error a driver or pool error stands for, if any."""
    if isinstance(exc, UniqueViolation):
        return _unique_violation_error(exc)
    if isinstance(exc, psycopg.OperationalError) and not isinstance(
        exc, psycopg.errors.PipelineAborted
    ):
        state = exc.sqlstate
        if state is None or state.startswith("08") or state in _UNAVAILABLE_SQLSTATES:
            return StoreUnavailableError(f"PostgreSQL is unavailable: {exc}")
        return None
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return StoreUnavailableError(f"no database connection available: {exc}")
    if isinstance(exc, psycopg_pool.PoolClosed):
        return StoreUnavailableError(f"the store is closed: {exc}")
    return None


class _DriverErrorBoundary:
    """``with _driver_errors:`` re-raises driver errors as turnstore errors (chained).

    Stateless, so one shared instance serves every call at the cost of a plain ``with``.
    Errors it does not know (a deadlock, a serialization failure) pass through unchanged:
    the host decides whether to retry those.
    """

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, TurnStoreError):
            return
        mapped = _translate(exc)
        if mapped is not None:
            raise mapped from exc


_driver_errors = _DriverErrorBoundary()


def _raise_translated(exc: Exception) -> None:
    """In an ``except`` block: raise the turnstore error ``exc`` stands for, chained; return
    (so the caller re-raises ``exc``) when it stands for none. The same mapping as
    ``_driver_errors``, for hot paths where a ``try`` costs nothing until something fails."""
    if isinstance(exc, TurnStoreError):
        return
    mapped = _translate(exc)
    if mapped is not None:
        raise mapped from exc


# ---------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------

#: Column order of every ``SELECT`` / ``RETURNING`` list: the ``Turn`` fields.
_COLUMNS: tuple[str, ...] = tuple(Turn.model_fields)
_STATE_INDEX = _COLUMNS.index("state")
_REQUESTER_INDEX = _COLUMNS.index("requester_type")
_STATES = {s.value: s for s in TurnState}
_REQUESTERS = {r.value: r for r in RequesterType}
_COLUMN_LIST = ", ".join(_COLUMNS)


def _make_turn(values: Sequence[Any]) -> Turn:
    """Build a ``Turn`` from a row in ``_COLUMNS`` order without re-validating it.

    Rows come from a table whose types and CHECK constraints already guarantee what the
    model would check; only the two enums need converting from text. This is what
    ``Turn.model_construct`` does, minus its per-field default handling.
    """
    data = dict(zip(_COLUMNS, values, strict=False))  # our own SELECT list: same length
    data["state"] = _STATES[values[_STATE_INDEX]]
    data["requester_type"] = _REQUESTERS[values[_REQUESTER_INDEX]]
    return trusted_turn(data)


def _turn_rows(cursor: Any) -> RowMaker[Turn]:
    """psycopg row factory producing ``Turn`` objects (the column order is our own)."""
    return _make_turn


# ---------------------------------------------------------------------------------------
# Scope compilation
# ---------------------------------------------------------------------------------------

_SCOPE_COLUMN_SQL: dict[str, str] = {
    prop: sql.Identifier(col).as_string(None) for prop, col in PROPERTY_COLUMNS.items()
}
_UNRESTRICTED: tuple[str, tuple[Any, ...]] = ("TRUE", ())
_NOTHING: tuple[str, tuple[Any, ...]] = ("FALSE", ())


def compile_scope(scope: AccessScope) -> tuple[str, tuple[Any, ...]]:
    """Compile ``scope`` to a boolean SQL expression over ``chat_turns`` and its parameters.

    Mirrors ``AccessScope.permits``: unrestricted is ``TRUE``; an OR of constraints, each an
    AND of ``col = %s`` / ``col = ANY(%s)``; a constraint naming an unknown property or an
    empty ``IN`` matches nothing and is dropped; nothing left is ``FALSE``. Column names
    come from a fixed table, values are always parameters.
    """
    check_scope(scope)
    if scope.unrestricted:
        return _UNRESTRICTED
    ors: list[str] = []
    params: list[Any] = []
    for constraint in scope.constraints:
        ands: list[str] = []
        values: list[Any] = []
        for f in constraint.filters:
            column = _SCOPE_COLUMN_SQL.get(f.name)
            if column is None or not f.values:
                break
            if f.op is FilterOp.EQ:
                ands.append(column + " = %s")
                values.append(f.values[0])
            else:
                ands.append(column + " = ANY(%s)")
                values.append(list(f.values))
        else:
            ors.append(" AND ".join(ands))
            params.extend(values)
    if not ors:
        return _NOTHING
    return "(" + ") OR (".join(ors) + ")", tuple(params)


# ---------------------------------------------------------------------------------------
# SQL
# ---------------------------------------------------------------------------------------
# ``{turns}`` is the schema-qualified table; ``{scope}`` marks where the compiled scope goes.
# Positional parameters appear in text order: method parameters first, the scope's last.

_NOW_CTE = "WITH clock AS (SELECT clock_timestamp() AS ts) "

_INSERT = (
    _NOW_CTE + "INSERT INTO {turns} (id, tenant_id, chat_id, request_id, requester_type,"
    " requester_user_id, state, provider_name, reserve_tokens, max_output_tokens_applied,"
    " reserved_credits_micro, policy_version_applied, effective_model,"
    " minimal_generation_floor_applied, web_search_enabled,"
    " started_at, last_progress_at, updated_at)"
    " VALUES (%s, %s, %s, %s, %s, %s, 'running', %s, %s, %s, %s, %s, %s, %s, %s,"
    " (SELECT ts FROM clock), (SELECT ts FROM clock), (SELECT ts FROM clock))"
    " ON CONFLICT DO NOTHING RETURNING " + _COLUMN_LIST
)

# Why an insert was refused, in the order the errors are reported.
_CLASSIFY_CONFLICT = (
    "SELECT"
    " EXISTS (SELECT 1 FROM {turns} WHERE id = %s),"
    " (SELECT id FROM {turns} WHERE chat_id = %s AND request_id = %s),"
    " (SELECT id FROM {turns}"
    "   WHERE chat_id = %s AND state = 'running' AND deleted_at IS NULL),"
    # The ids of those two rows that the caller's scope permits: an error names a turn
    # only when the caller could have read it.
    " ARRAY(SELECT id FROM {turns} WHERE chat_id = %s"
    "   AND (request_id = %s OR (state = 'running' AND deleted_at IS NULL)) AND ({scope}))"
)

_FIND_BY_REQUEST = (
    "SELECT " + _COLUMN_LIST + " FROM {turns} WHERE chat_id = %s AND request_id = %s AND ({scope})"
)

_FIND_RUNNING = (
    "SELECT " + _COLUMN_LIST + " FROM {turns}"
    " WHERE chat_id = %s AND state = 'running' AND deleted_at IS NULL AND ({scope})"
)

_CAS_STATE = (
    _NOW_CTE + "UPDATE {turns} SET state = %s, error_code = %s, error_detail = %s,"
    " assistant_message_id = COALESCE(%s::uuid, assistant_message_id),"
    " provider_response_id = COALESCE(%s::varchar, provider_response_id),"
    " completed_at = clock.ts, updated_at = clock.ts"
    " FROM clock WHERE id = %s AND state = 'running' AND ({scope})"
)

_CAS_COMPLETED = (
    _NOW_CTE + "UPDATE {turns} SET state = 'completed', assistant_message_id = %s,"
    " provider_response_id = COALESCE(%s::varchar, provider_response_id),"
    " completed_at = clock.ts, updated_at = clock.ts"
    " FROM clock WHERE id = %s AND state = 'running' AND ({scope})"
)

_SET_ASSISTANT_MESSAGE = (
    _NOW_CTE + "UPDATE {turns} SET assistant_message_id = %s, updated_at = clock.ts"
    " FROM clock WHERE id = %s AND ({scope})"
)

# Idempotent: a second delete keeps the first deleted_at, replaced_by_request_id and
# updated_at (SET expressions read the row as it was before this statement).
_SOFT_DELETE = (
    _NOW_CTE + "UPDATE {turns} SET"
    " deleted_at = COALESCE(deleted_at, clock.ts),"
    " replaced_by_request_id = CASE WHEN deleted_at IS NULL THEN %s::uuid"
    "   ELSE replaced_by_request_id END,"
    " updated_at = CASE WHEN deleted_at IS NULL THEN clock.ts ELSE updated_at END"
    " FROM clock WHERE id = %s AND ({scope})"
)

_LATEST_WHERE = (
    " FROM {turns} WHERE chat_id = %s AND deleted_at IS NULL AND ({scope})"
    " ORDER BY started_at DESC, id DESC LIMIT 1"
)

_FIND_LATEST = "SELECT " + _COLUMN_LIST + _LATEST_WHERE

_UPDATE_PROGRESS = (
    _NOW_CTE + "UPDATE {turns} SET last_progress_at = clock.ts, updated_at = clock.ts"
    " FROM clock WHERE id = %s AND state = 'running' AND ({scope})"
)

_FIND_ORPHANS = (
    _NOW_CTE + "SELECT " + _COLUMN_LIST + " FROM {turns}, clock"
    " WHERE state = 'running' AND deleted_at IS NULL"
    " AND last_progress_at <= clock.ts - make_interval(secs => %s)"
    " ORDER BY last_progress_at, id LIMIT %s"
)

_FINALIZE_ORPHAN = (
    _NOW_CTE + "UPDATE {turns} SET state = 'failed', error_code = %s,"
    " completed_at = clock.ts, updated_at = clock.ts"
    " FROM clock WHERE id = %s AND state = 'running' AND deleted_at IS NULL"
    " AND last_progress_at <= clock.ts - make_interval(secs => %s)"
)

_LOCK_CHAT = f"SELECT pg_advisory_xact_lock({CHAT_LOCK_CLASS}, hashtext(%s::text))"

_LATEST_FOR_UPDATE = "SELECT " + _COLUMN_LIST + _LATEST_WHERE + " FOR UPDATE"

_LATEST_ID = "SELECT id" + _LATEST_WHERE

_UPDATE_PREFLIGHT = (
    _NOW_CTE + "UPDATE {turns} SET reserve_tokens = %s, max_output_tokens_applied = %s,"
    " reserved_credits_micro = %s, policy_version_applied = %s, effective_model = %s,"
    " minimal_generation_floor_applied = %s, updated_at = clock.ts"
    " FROM clock WHERE id = %s AND state = 'running' AND ({scope})"
)

_INCREMENT_TOOL = (
    _NOW_CTE + "UPDATE {turns} SET {counter} = {counter} + 1, updated_at = clock.ts"
    " FROM clock WHERE id = %s AND state = 'running' AND deleted_at IS NULL AND ({scope})"
)

_SCOPE_MARK = "\x00scope\x00"

# How many times ``find_latest_for_update`` re-reads when a lock holder that bypassed the
# chat lock changed which turn is latest, and how often ``create_turn`` retries an insert
# whose conflicting row vanished before it could be classified.
_MAX_RELOCKS = 8
_MAX_INSERT_ATTEMPTS = 8

# Scope objects a repository keeps compiled; past this many it starts over (scopes are
# per request, so an old one is rarely seen again).
_SCOPE_CACHE_SIZE = 256


@dataclass(frozen=True, eq=False)
class _Scoped:
    """A statement split around its scope placeholder (hashed by identity: it is a key of
    every ``_CompiledScope.rendered``)."""

    head: str
    tail: str

    def render(self, scope_sql: str) -> str:
        return self.head + scope_sql + self.tail


class _CompiledScope:
    """One scope object compiled once, with the statements rendered around it so far.

    A host builds a scope per request and passes that object to every call of the request,
    so compiling and rendering per scope object, not per call, leaves each call a dict
    lookup; the same ``str`` object each time also keeps psycopg's query cache lookups
    cheap (its hash is computed once).
    """

    __slots__ = ("params", "rendered", "scope", "sql")

    def __init__(self, scope: AccessScope) -> None:
        self.sql, self.params = compile_scope(scope)
        # Held so that ``id(scope)``, the cache key, cannot be reused while cached.
        self.scope = scope
        self.rendered: dict[_Scoped, str] = {}

    def statement(self, scoped: _Scoped) -> str:
        text = self.rendered.get(scoped)
        if text is None:
            text = self.rendered[scoped] = scoped.render(self.sql)
        return text


def _param_ident(*names: str) -> sql.SQL:
    """A quoted identifier for a statement executed with parameters.

    psycopg reads every ``%`` of such a statement as a placeholder, quoted identifiers
    included, so a name like ``50%off`` would break it; the ``%`` is doubled here (and only
    here: a statement executed without parameters is sent as written).
    """
    return sql.SQL(sql.Identifier(*names).as_string(None).replace("%", "%%"))


def _render(template: str, schema: str, **identifiers: str) -> str:
    """Render a statement for ``schema``; identifiers are quoted, never interpolated raw.

    Every rendered statement is executed with parameters, so identifiers are escaped for it.
    """
    names = {key: _param_ident(value) for key, value in identifiers.items()}
    query = sql.SQL(template).format(
        turns=_param_ident(schema, "chat_turns"), scope=sql.SQL(_SCOPE_MARK), **names
    )
    return query.as_string(None)


def _render_scoped(template: str, schema: str, **identifiers: str) -> _Scoped:
    head, tail = _render(template, schema, **identifiers).split(_SCOPE_MARK)
    return _Scoped(head, tail)


class PostgresTurnRepository:
    """``TurnRepository`` on PostgreSQL; the runner is a ``psycopg.AsyncConnection``.

    Stateless apart from the statements rendered for ``schema``: one instance can serve any
    number of connections and tasks at once.
    """

    __slots__ = (
        "_cas_completed",
        "_cas_state",
        "_classify",
        "_finalize_orphan",
        "_find_by_request",
        "_find_latest",
        "_find_orphans",
        "_find_running",
        "_increment",
        "_insert",
        "_latest_for_update",
        "_latest_id",
        "_lock_chat",
        "_scopes",
        "_set_assistant_message",
        "_soft_delete",
        "_update_preflight",
        "_update_progress",
        "schema",
    )

    def __init__(self, schema: str = DEFAULT_SCHEMA) -> None:
        if not isinstance(schema, str) or not schema or "\x00" in schema:
            raise InvalidParameterError(f"schema must be a non-empty name, got {schema!r}")
        self.schema = schema
        self._insert = _render(_INSERT, schema)
        self._classify = _render_scoped(_CLASSIFY_CONFLICT, schema)
        self._find_by_request = _render_scoped(_FIND_BY_REQUEST, schema)
        self._find_running = _render_scoped(_FIND_RUNNING, schema)
        self._cas_state = _render_scoped(_CAS_STATE, schema)
        self._cas_completed = _render_scoped(_CAS_COMPLETED, schema)
        self._set_assistant_message = _render_scoped(_SET_ASSISTANT_MESSAGE, schema)
        self._soft_delete = _render_scoped(_SOFT_DELETE, schema)
        self._find_latest = _render_scoped(_FIND_LATEST, schema)
        self._update_progress = _render_scoped(_UPDATE_PROGRESS, schema)
        self._find_orphans = _render(_FIND_ORPHANS, schema)
        self._finalize_orphan = _render(_FINALIZE_ORPHAN, schema)
        self._lock_chat = _LOCK_CHAT
        self._latest_for_update = _render_scoped(_LATEST_FOR_UPDATE, schema)
        self._latest_id = _render_scoped(_LATEST_ID, schema)
        self._update_preflight = _render_scoped(_UPDATE_PREFLIGHT, schema)
        self._increment = {
            tool: _render_scoped(_INCREMENT_TOOL, schema, counter=tool.column)
            for tool in ToolCallType
        }
        self._scopes: dict[int, _CompiledScope] = {}

    def __repr__(self) -> str:
        return f"PostgresTurnRepository(schema={self.schema!r})"

    def _compiled(self, scope: AccessScope) -> _CompiledScope:
        """``scope`` compiled (``compile_scope``), from the cache when this very object was
        compiled before; an ``InvalidParameterError`` for anything but an ``AccessScope``."""
        compiled = self._scopes.get(id(scope))
        if compiled is not None and compiled.scope is scope:
            return compiled
        compiled = _CompiledScope(scope)
        if len(self._scopes) >= _SCOPE_CACHE_SIZE:
            self._scopes.clear()
        self._scopes[id(scope)] = compiled
        return compiled

    # ``_one`` and ``_count`` run nearly every statement, so they spell out the cache hit
    # of ``_compiled`` and use ``try`` (free when nothing is raised) for the error boundary.

    async def _one(
        self, conn: Connection, statement: _Scoped, scope: AccessScope, head: tuple[Any, ...]
    ) -> Turn | None:
        """Run a scoped SELECT; ``head`` are the parameters before the scope's."""
        compiled = self._scopes.get(id(scope))
        if compiled is None or compiled.scope is not scope:
            compiled = self._compiled(scope)
        query = compiled.rendered.get(statement) or compiled.statement(statement)
        try:
            cur = conn.cursor(row_factory=_turn_rows)
            await cur.execute(query, head + compiled.params)
            return await cur.fetchone()
        except Exception as exc:
            _raise_translated(exc)
            raise

    async def _count(
        self, conn: Connection, statement: _Scoped, scope: AccessScope, head: tuple[Any, ...]
    ) -> int:
        """Run a scoped UPDATE; return the rows it changed."""
        compiled = self._scopes.get(id(scope))
        if compiled is None or compiled.scope is not scope:
            compiled = self._compiled(scope)
        query = compiled.rendered.get(statement) or compiled.statement(statement)
        try:
            cur = await conn.execute(query, head + compiled.params)
        except Exception as exc:
            _raise_translated(exc)
            raise
        return cur.rowcount

    async def create_turn(
        self, runner: Connection, scope: AccessScope, params: CreateTurnParams
    ) -> Turn:
        check_instance("params", params, CreateTurnParams)
        compiled = self._compiled(scope)
        if not scope.permits(params):
            raise ScopeDeniedError(params.id, params.tenant_id)
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
        )
        with _driver_errors:
            for _ in range(_MAX_INSERT_ATTEMPTS):
                inserted = runner.cursor(row_factory=_turn_rows)
                await inserted.execute(self._insert, values)
                turn = await inserted.fetchone()
                if turn is not None:
                    return turn
                classify_params = (
                    params.id,
                    params.chat_id,
                    params.request_id,
                    params.chat_id,
                    params.chat_id,
                    params.request_id,
                    *compiled.params,
                )
                cur = await runner.cursor().execute(
                    compiled.statement(self._classify), classify_params
                )
                row = await cur.fetchone()
                assert row is not None
                id_taken, existing_id, running_id, permitted = row
                if id_taken:
                    raise DuplicateTurnIdError(params.id)
                if existing_id is not None:
                    raise DuplicateRequestError(
                        params.chat_id,
                        params.request_id,
                        existing_id if existing_id in permitted else None,
                    )
                if running_id is not None:
                    raise GenerationInProgressError(
                        params.chat_id, running_id if running_id in permitted else None
                    )
                # The conflicting row was gone by the time we looked (its transaction
                # rolled back, or the running turn was finalized): try again.
        raise GenerationInProgressError(params.chat_id)

    async def find_by_chat_and_request_id(
        self, runner: Connection, scope: AccessScope, chat_id: UUID, request_id: UUID
    ) -> Turn | None:
        check_uuid("chat_id", chat_id)
        check_uuid("request_id", request_id)
        return await self._one(runner, self._find_by_request, scope, (chat_id, request_id))

    async def find_running_by_chat_id(
        self, runner: Connection, scope: AccessScope, chat_id: UUID
    ) -> Turn | None:
        check_uuid("chat_id", chat_id)
        return await self._one(runner, self._find_running, scope, (chat_id,))

    async def cas_update_state(
        self, runner: Connection, scope: AccessScope, params: CasTerminalParams
    ) -> int:
        check_instance("params", params, CasTerminalParams)
        head = (
            params.state.value,
            params.error_code,
            params.error_detail,
            params.assistant_message_id,
            params.provider_response_id,
            params.turn_id,
        )
        return await self._count(runner, self._cas_state, scope, head)

    async def cas_update_completed(
        self, runner: Connection, scope: AccessScope, params: CasCompleteParams
    ) -> int:
        check_instance("params", params, CasCompleteParams)
        head = (params.assistant_message_id, params.provider_response_id, params.turn_id)
        return await self._count(runner, self._cas_completed, scope, head)

    async def set_assistant_message_id(
        self, runner: Connection, scope: AccessScope, turn_id: UUID, assistant_message_id: UUID
    ) -> None:
        check_uuid("turn_id", turn_id)
        check_uuid("assistant_message_id", assistant_message_id)
        head = (assistant_message_id, turn_id)
        if await self._count(runner, self._set_assistant_message, scope, head) == 0:
            raise TurnNotFoundError(turn_id)

    async def soft_delete(
        self,
        runner: Connection,
        scope: AccessScope,
        turn_id: UUID,
        replaced_by_request_id: UUID | None,
    ) -> None:
        check_uuid("turn_id", turn_id)
        if replaced_by_request_id is not None:
            check_uuid("replaced_by_request_id", replaced_by_request_id)
        head = (replaced_by_request_id, turn_id)
        if await self._count(runner, self._soft_delete, scope, head) == 0:
            raise TurnNotFoundError(turn_id)

    async def find_latest_turn(
        self, runner: Connection, scope: AccessScope, chat_id: UUID
    ) -> Turn | None:
        check_uuid("chat_id", chat_id)
        return await self._one(runner, self._find_latest, scope, (chat_id,))

    async def update_progress_at(
        self, runner: Connection, scope: AccessScope, turn_id: UUID
    ) -> int:
        check_uuid("turn_id", turn_id)
        return await self._count(runner, self._update_progress, scope, (turn_id,))

    async def find_orphan_candidates(
        self, runner: Connection, timeout_secs: int, limit: int
    ) -> list[Turn]:
        validate_orphan_args(timeout_secs, limit)
        with _driver_errors:
            cur = runner.cursor(row_factory=_turn_rows)
            await cur.execute(self._find_orphans, (timeout_secs, limit))
            return await cur.fetchall()

    async def cas_finalize_orphan(
        self, runner: Connection, turn_id: UUID, timeout_secs: int
    ) -> int:
        check_uuid("turn_id", turn_id)
        validate_orphan_args(timeout_secs)
        with _driver_errors:
            cur = await runner.execute(
                self._finalize_orphan, (ORPHAN_ERROR_CODE, turn_id, timeout_secs)
            )
        return cur.rowcount

    async def find_latest_for_update(
        self, runner: Connection, scope: AccessScope, chat_id: UUID
    ) -> Turn | None:
        """Serialize the chat with a transaction-level advisory lock, then read and lock its
        latest turn in a new statement (a fresh snapshot taken after the wait), then read
        the latest id once more: if a transaction that bypassed the chat lock replaced the
        turn we waited on, ``FOR UPDATE`` hands back an older row, and we go again.

        All three statements go out in one round trip (pipeline mode).
        """
        check_uuid("chat_id", chat_id)
        compiled = self._compiled(scope)
        select = compiled.statement(self._latest_for_update)
        verify = compiled.statement(self._latest_id)
        select_params = (chat_id, *compiled.params)
        with _driver_errors:
            lock_params: tuple[Any, ...] | None = (chat_id,)
            turn: Turn | None = None
            for _ in range(_MAX_RELOCKS):
                locked = runner.cursor(row_factory=_turn_rows)
                check = runner.cursor()
                async with runner.pipeline():
                    if lock_params is not None:
                        await runner.execute(self._lock_chat, lock_params)
                    await locked.execute(select, select_params)
                    await check.execute(verify, select_params)
                turn = await locked.fetchone()
                latest = await check.fetchone()
                latest_id = latest[0] if latest is not None else None
                if (turn.id if turn is not None else None) == latest_id:
                    return turn
                lock_params = None
            return turn

    async def update_preflight_fields(
        self, runner: Connection, scope: AccessScope, params: UpdatePreflightParams
    ) -> int:
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
        return await self._count(runner, self._update_preflight, scope, head)

    async def increment_tool_calls(
        self, runner: Connection, scope: AccessScope, turn_id: UUID, tool: ToolCallType
    ) -> None:
        check_uuid("turn_id", turn_id)
        statement = self._increment.get(tool)
        if statement is None:
            raise InvalidParameterError(f"tool must be a ToolCallType, got {tool!r}")
        await self._count(runner, statement, scope, (turn_id,))


# ---------------------------------------------------------------------------------------
# Migrations
# ---------------------------------------------------------------------------------------

_MIGRATION_NAME = re.compile(r"^(\d+)_([A-Za-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One numbered file of ``sql/``."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """sha256 of the file's UTF-8 text, recorded when the migration is applied."""
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class SchemaStatus:
    """What ``check_schema`` found: versions applied, pending, changed since they were
    applied (checksum differs), and recorded without a file (from a newer turnstore)."""

    applied: tuple[int, ...]
    pending: tuple[int, ...]
    changed: tuple[int, ...]
    unknown: tuple[int, ...]

    @property
    def current(self) -> bool:
        """True when every migration is applied, unchanged, and nothing unknown is recorded."""
        return not (self.pending or self.changed or self.unknown)

    def require_current(self, schema: str) -> None:
        """Raise ``SchemaMismatchError`` naming what differs unless the schema is current."""
        if not self.current:
            raise SchemaMismatchError(
                schema, pending=self.pending, changed=self.changed, unknown=self.unknown
            )


def _sql_dir() -> Any:
    """Where the migration files are: inside the installed package (a wheel ships them as
    ``turnstore/sql``), else the repository's top-level ``sql/`` (an editable install)."""
    packaged = resources.files("turnstore") / "sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "sql"


def migration_files() -> list[Migration]:
    """Every migration file, in version order."""
    directory = _sql_dir()
    found: dict[int, Migration] = {}
    for entry in directory.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migration files share version {version}")
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    if not found:
        raise MigrationError(f"no migration files found in {directory}")
    return [found[v] for v in sorted(found)]


_CREATE_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS {table} ("
    " version integer PRIMARY KEY,"
    " name text NOT NULL,"
    " checksum text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
)


def _version_table(schema: str) -> sql.Identifier:
    return sql.Identifier(schema, "schema_migrations")


def schema_sql(schema: str = DEFAULT_SCHEMA) -> str:
    """The whole schema as one SQL script, for teams that apply DDL with their own tool.

    It creates the schema, sets ``search_path`` to it, runs every migration, and records
    them in ``schema_migrations`` so ``check_schema`` reports the database as current.
    """
    ident = sql.Identifier(schema).as_string(None)
    table = _version_table(schema).as_string(None)
    parts = [
        f"-- turnstore schema {ident}",
        f"CREATE SCHEMA IF NOT EXISTS {ident};",
        f"SET search_path TO {ident};",
        "",
    ]
    for m in migration_files():
        parts.append(f"-- migration {m.version:04d}_{m.name}")
        parts.append(m.sql.rstrip() + "\n")
    parts.append(sql.SQL(_CREATE_VERSION_TABLE).format(table=sql.SQL(table)).as_string(None) + ";")
    for m in migration_files():
        row = sql.SQL("INSERT INTO {} (version, name, checksum) VALUES ({}, {}, {})").format(
            sql.SQL(table), sql.Literal(m.version), sql.Literal(m.name), sql.Literal(m.checksum)
        )
        parts.append(row.as_string(None) + " ON CONFLICT (version) DO NOTHING;")
    return "\n".join(parts) + "\n"


def _compare(files: list[Migration], recorded: dict[int, tuple[str, str]]) -> SchemaStatus:
    by_version = {m.version: m for m in files}
    applied = tuple(sorted(v for v in recorded if v in by_version))
    changed = tuple(v for v in applied if recorded[v][1] != by_version[v].checksum)
    unknown = tuple(sorted(v for v in recorded if v not in by_version))
    pending = tuple(m.version for m in files if m.version not in recorded)
    return SchemaStatus(applied=applied, pending=pending, changed=changed, unknown=unknown)


async def _read_recorded(conn: Connection, schema: str) -> dict[int, tuple[str, str]]:
    query = sql.SQL("SELECT version, name, checksum FROM {}").format(_version_table(schema))
    cur = conn.cursor(row_factory=psycopg.rows.tuple_row)
    await cur.execute(query)
    return {int(v): (str(n), str(c)) for v, n, c in await cur.fetchall()}


async def check_schema(conn: Connection, schema: str = DEFAULT_SCHEMA) -> SchemaStatus:
    """Compare the database's ``schema_migrations`` with the migration files.

    Reads only the version table, so it needs no DDL rights; a missing table (or schema)
    means nothing is applied. Safe inside the caller's transaction: nothing here fails.
    """
    files = migration_files()
    with _driver_errors:
        cur = conn.cursor(row_factory=psycopg.rows.tuple_row)
        await cur.execute(
            "SELECT to_regclass(quote_ident(%s) || '.schema_migrations') IS NOT NULL", (schema,)
        )
        row = await cur.fetchone()
        recorded = await _read_recorded(conn, schema) if row and row[0] else {}
    return _compare(files, recorded)


async def migrate(conn: Connection, schema: str = DEFAULT_SCHEMA) -> list[int]:
    """Apply the pending migrations to ``schema``; return the versions applied, in order.

    ``conn`` must not be inside a transaction: each migration runs in a transaction of its
    own (``SET LOCAL search_path`` to the schema), and a session-level advisory lock keeps
    concurrent callers (several app instances starting at once) from racing: the second
    waits, then finds nothing to do. Refuses with ``MigrationError``, applying nothing, when
    an applied file's checksum changed or a recorded version has no file.
    """
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise MigrationError(
            "migrate() needs a connection outside any transaction: each migration runs in "
            "a transaction of its own (use an autocommit connection, or commit first)"
        )
    files = migration_files()
    schema_ident = sql.Identifier(schema)
    restore_autocommit = conn.autocommit
    with _driver_errors:
        if not restore_autocommit:
            await conn.set_autocommit(True)
        try:
            await conn.execute(
                f"SELECT pg_advisory_lock({MIGRATION_LOCK_CLASS}, hashtext(%s))", (schema,)
            )
            try:
                return await _migrate_locked(conn, schema, schema_ident, files)
            finally:
                if not conn.closed:
                    await conn.execute(
                        f"SELECT pg_advisory_unlock({MIGRATION_LOCK_CLASS}, hashtext(%s))",
                        (schema,),
                    )
        finally:
            if not restore_autocommit and not conn.closed:
                await conn.set_autocommit(False)


async def _migrate_locked(
    conn: Connection, schema: str, schema_ident: sql.Identifier, files: list[Migration]
) -> list[int]:
    cur = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
    if await cur.fetchone() is None:
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema_ident))
    await conn.execute(sql.SQL(_CREATE_VERSION_TABLE).format(table=_version_table(schema)))
    status = _compare(files, await _read_recorded(conn, schema))
    if status.changed:
        raise MigrationError(
            f"applied migration(s) {list(status.changed)} in schema {schema!r} no longer "
            "match their files (checksum changed); refusing to migrate"
        )
    if status.unknown:
        raise MigrationError(
            f"schema {schema!r} records migration(s) {list(status.unknown)} that this "
            "turnstore does not have (a newer version migrated it); refusing to migrate"
        )
    insert = sql.SQL("INSERT INTO {} (version, name, checksum) VALUES (%s, %s, %s)").format(
        _param_ident(schema, "schema_migrations")
    )
    set_path = sql.SQL("SET LOCAL search_path TO {}").format(schema_ident)
    applied: list[int] = []
    for m in files:
        if m.version not in status.pending:
            continue
        try:
            async with conn.transaction():
                await conn.execute(set_path)
                await conn.execute(m.sql.encode("utf-8"))
                await conn.execute(insert, (m.version, m.name, m.checksum))
        except psycopg.Error as exc:
            if _translate(exc) is not None:
                raise
            raise MigrationError(
                f"migration {m.version:04d}_{m.name} failed in schema {schema!r}: {exc}"
            ) from exc
        applied.append(m.version)
    return applied


# ---------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------


class _AutocommitConnection(AbstractAsyncContextManager[Connection]):
    """``PostgresStore.connection()``: a pooled connection in autocommit for one block.

    A class rather than an ``@asynccontextmanager`` generator: every keep-alive write and
    every single-statement call goes through it, and a plain object costs a few
    microseconds less per use.
    """

    __slots__ = ("_conn", "_pool", "_switched")

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._switched = False

    async def __aenter__(self) -> Connection:
        pool = self._pool
        try:
            conn: Connection = await pool.getconn()
        except Exception as exc:
            _raise_translated(exc)
            raise
        if not conn.autocommit:
            # A host pool's connection: switched for the block, switched back on exit.
            try:
                with _driver_errors:
                    await conn.set_autocommit(True)
            except BaseException:
                await pool.putconn(conn)
                raise
            self._switched = True
        self._conn = conn
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        try:
            if self._switched and not conn.closed:
                with _driver_errors:
                    await conn.set_autocommit(False)
        finally:
            await self._pool.putconn(conn)


class PostgresStore:
    """A ``TurnStore`` over a psycopg-pool ``AsyncConnectionPool``.

    ``await PostgresStore.open(dsn)`` creates and owns a pool of autocommit connections;
    ``PostgresStore(pool=host_pool)`` wraps a pool the host owns (``close`` then leaves it
    open). ``connection()`` hands out a connection in autocommit (each call atomic on its
    own); ``transaction()`` one inside a transaction, committed on clean exit.
    """

    def __init__(
        self,
        pool: Pool,
        *,
        schema: str = DEFAULT_SCHEMA,
        dsn: str | None = None,
        owns_pool: bool = False,
    ) -> None:
        self._pool = pool
        self._dsn = dsn
        self._owns_pool = owns_pool
        self._turns = PostgresTurnRepository(schema)

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
    ) -> PostgresStore:
        """Open a pool of ``min_size..max_size`` autocommit connections to ``dsn``.

        Waits up to ``timeout`` seconds for the first ``min_size`` connections, and uses the
        same timeout when a call waits for a free connection; ``StoreUnavailableError`` when
        the server cannot be reached in that time. With ``verify_schema`` it also runs
        ``verify_schema()`` once, so an app that does not migrate itself fails at start
        instead of on its first call; on failure the pool is closed before the error
        propagates.
        """
        repository = PostgresTurnRepository(schema)
        pool: Pool = psycopg_pool.AsyncConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            kwargs={"autocommit": True},
            open=False,
            name=f"turnstore:{schema}",
        )
        try:
            with _driver_errors:
                await pool.open(wait=True, timeout=timeout)
            store = cls(pool, schema=repository.schema, dsn=dsn, owns_pool=True)
            if verify_schema:
                await store.verify_schema()
        except BaseException:
            await pool.close()
            raise
        return store

    @property
    def turns(self) -> PostgresTurnRepository:
        return self._turns

    @property
    def schema(self) -> str:
        return self._turns.schema

    @property
    def pool(self) -> Pool:
        return self._pool

    @property
    def dsn(self) -> str | None:
        """The DSN the store opened, or ``None`` when it wraps a host's pool."""
        return self._dsn

    async def _acquire(self) -> Connection:
        with _driver_errors:
            conn: Connection = await self._pool.getconn()
        return conn

    def connection(self) -> AbstractAsyncContextManager[Connection]:
        """A pooled connection in autocommit (a host pool's connection is switched to
        autocommit for the duration and switched back)."""
        return _AutocommitConnection(self._pool)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A pooled connection inside a transaction: committed when the block ends
        normally, rolled back when it raises."""
        conn = await self._acquire()
        try:
            with _driver_errors:
                async with conn.transaction():
                    yield conn
        finally:
            await self._pool.putconn(conn)

    async def migrate(self) -> None:
        """Apply pending migrations to this store's schema (see ``migrate``)."""
        async with self.connection() as conn:
            await migrate(conn, schema=self.schema)

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

    async def close(self) -> None:
        """Close the pool if this store opened it; a host's pool is left alone."""
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
