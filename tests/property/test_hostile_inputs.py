"""Hostile inputs at every database door, on both backends (docs/security.md, *How refusal
looks*): the 14 repository methods, the lifecycle, the watchdog, ``PostgresStore.open`` and
its constructor, ``migrate`` and ``check_schema``.

Each example takes a valid call aimed at a real row (a completed turn, a running turn, the
latest turn of a chat, all in the caller's tenant), breaks one argument with a value that is
never valid for it, and asserts that the call raises one of the documented errors
(``InvalidParameterError`` for a method argument, ``pydantic.ValidationError`` for a field
of a parameter model, another ``TurnStoreError`` nowhere here) and that the table is exactly
as before: no row added, none changed (every write moves ``updated_at``).

The exact reproductions of what once escaped come first, as plain examples. The server-free
doors (models, scopes, settings, schema names, the command line) are in
tests/unit/test_hostile_models.py. ``TURNSTORE_HYPOTHESIS_PROFILE=thorough`` tries ten times
as many inputs.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from hostile_support import (
    bool_hostile,
    int_hostile,
    refused,
    schema_hostile,
    scope_hostile,
    seconds_hostile,
    text_hostile,
    uuid_hostile,
)
from turnstore.errors import InvalidParameterError, TurnStoreError
from turnstore.lifecycle import TurnLifecycle
from turnstore.model import (
    INT4_MAX,
    CasCompleteParams,
    CasTerminalParams,
    CreateTurnParams,
    RequesterType,
    ToolCallType,
    Turn,
    TurnState,
    UpdatePreflightParams,
)
from turnstore.postgres import PostgresStore, check_schema, migrate
from turnstore.scope import AccessScope
from turnstore.settings import KeepAliveSettings, WatchdogSettings
from turnstore.testing.backends import BackendHarness
from turnstore.validation import MAX_ERROR_DETAIL_CHARS
from turnstore.watchdog import OrphanWatchdog

PROFILE_ENV = "TURNSTORE_HYPOTHESIS_PROFILE"
_SCALE = 10 if os.environ.get(PROFILE_ENV) == "thorough" else 1


def hostile_settings(examples: int) -> settings:
    return settings(
        max_examples=examples * _SCALE,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )


TENANT = UUID("01890a5d-ac96-774b-bcce-b302099a7001")
USER = UUID("01890a5d-ac96-774b-bcce-b302099a7002")
COMPLETED_CHAT = UUID("01890a5d-ac96-774b-bcce-b302099a7003")
RUNNING_CHAT = UUID("01890a5d-ac96-774b-bcce-b302099a7004")
SCOPE = AccessScope.for_tenant(TENANT)


@dataclass
class Seeded:
    """A store holding a completed turn and a running turn of the caller's tenant."""

    backend: BackendHarness
    completed: Turn
    running: Turn

    @property
    def store(self) -> Any:
        return self.backend.store


def user_turn(chat_id: UUID) -> CreateTurnParams:
    return CreateTurnParams(
        id=uuid4(),
        tenant_id=TENANT,
        chat_id=chat_id,
        request_id=uuid4(),
        requester_type=RequesterType.USER,
        requester_user_id=USER,
    )


@pytest.fixture
async def seeded(turnstore_backend: BackendHarness) -> Seeded:
    store = turnstore_backend.store
    async with store.connection() as conn:
        completed = await store.turns.create_turn(conn, SCOPE, user_turn(COMPLETED_CHAT))
        params = CasCompleteParams(turn_id=completed.id, assistant_message_id=uuid4())
        assert await store.turns.cas_update_completed(conn, SCOPE, params) == 1
        running = await store.turns.create_turn(conn, SCOPE, user_turn(RUNNING_CHAT))
    return Seeded(turnstore_backend, completed, running)


async def table_state(backend: BackendHarness) -> list[tuple[Any, ...]]:
    """Every row's id and last write time: any insert or update changes it."""
    store: Any = backend.store
    if backend.name == "memory":
        rows = [row.committed for row in store._database.rows.values()]
        return sorted((t.id, t.updated_at) for t in rows if t is not None)
    query = sql.SQL("SELECT id, updated_at FROM {} ORDER BY id").format(
        sql.Identifier(store.schema, "chat_turns")
    )
    async with store.connection() as conn:
        cur = await conn.execute(query)
        return [tuple(row) for row in await cur.fetchall()]


async def refused_writing_nothing(
    seeded: Seeded, call: Callable[[], Awaitable[object]], *, invalid_parameter: bool
) -> BaseException:
    before = await table_state(seeded.backend)
    error = await refused(call, invalid_parameter=invalid_parameter)
    assert await table_state(seeded.backend) == before, "a refused call wrote"
    return error


# --------------------------------------------------------------------------- reproductions


async def test_reproductions_that_once_escaped_are_refused_before_any_write(
    seeded: Seeded,
) -> None:
    lc: TurnLifecycle[Any] = TurnLifecycle(seeded.store)
    completed, running = seeded.completed, seeded.running

    async def run(call: Callable[[], Awaitable[object]]) -> BaseException:
        return await refused_writing_nothing(seeded, call, invalid_parameter=True)

    # AttributeError: 'NoneType' object has no attribute 'permits'
    error = await run(
        lambda: lc.delete_turn(
            None,  # type: ignore[arg-type]
            completed.tenant_id,
            COMPLETED_CHAT,
            completed.request_id,
            USER,
        )
    )
    assert "scope must be an AccessScope" in str(error)
    # 'UUID' object has no attribute 'id'
    error = await run(lambda: lc.complete_turn(SCOPE, running.id, uuid4()))  # type: ignore[arg-type]
    assert "turn must be a Turn" in str(error)
    # ForbiddenError for a string actor id, instead of a parameter error
    error = await run(
        lambda: lc.delete_turn(
            SCOPE,
            completed.tenant_id,
            COMPLETED_CHAT,
            completed.request_id,
            str(USER),  # type: ignore[arg-type]
        )
    )
    assert "actor_user_id" in str(error)
    # find_orphan_candidates(c, 60, None) ran with no limit
    async with seeded.store.connection() as conn:
        error = await run(lambda: seeded.store.turns.find_orphan_candidates(conn, 60, None))
    assert "limit" in str(error)
    # A 256 MiB error_detail was stored: now refused by the model (16384 characters at most)
    error = await refused_writing_nothing(
        seeded,
        lambda: lc.fail_turn(SCOPE, running, "e", "x" * (MAX_ERROR_DETAIL_CHARS + 1)),
        invalid_parameter=False,
    )
    assert isinstance(error, pydantic.ValidationError)
    assert "error_detail" in str(error)


@pytest.mark.parametrize("turnstore_backend_name", ["postgres"])
async def test_the_error_detail_limit_holds_in_the_database_too(seeded: Seeded) -> None:
    """The CHECK of migration 0002 refuses what the model refuses, for a writer that
    bypasses the model."""
    table = sql.Identifier(seeded.store.schema, "chat_turns")
    update = sql.SQL("UPDATE {} SET error_detail = %s WHERE id = %s").format(table)
    async with seeded.store.connection() as conn:
        await conn.execute(update, ("é" * MAX_ERROR_DETAIL_CHARS, seeded.running.id))
        with pytest.raises(psycopg.errors.CheckViolation, match="error_detail_length"):
            await conn.execute(update, ("x" * (MAX_ERROR_DETAIL_CHARS + 1), seeded.running.id))


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"min_size": 5, "max_size": 2}, "max_size"),
        ({"min_size": -1}, "min_size"),
        ({"max_size": 0}, "max_size"),
        ({"min_size": True}, "min_size"),
        ({"max_size": 2.0}, "max_size"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"schema": "pg_probe"}, "schema"),
        ({"schema": "s" * 63 + "_A"}, "schema"),
        ({"schema": "bad\udcffname"}, "schema"),
        ({"verify_schema": "no"}, "verify_schema"),
    ],
)
async def test_open_refuses_bad_arguments_before_connecting(
    turnstore_pg_dsn: str, kwargs: dict[str, Any], argument: str
) -> None:
    with pytest.raises(InvalidParameterError, match=argument):
        await PostgresStore.open(turnstore_pg_dsn, **kwargs)


# --------------------------------------------------------------------------- the repository

_ID = uuid_hostile()
_OPTIONAL_ID = uuid_hostile().filter(lambda value: value is not None)
_TOOL = st.sampled_from([None, 1, "WEB_SEARCH", "web", b"web_search", TurnState.RUNNING, ["x"]])


def _params_hostile(valid: pydantic.BaseModel) -> st.SearchStrategy[object]:
    """Never an instance of ``valid``'s class: its dict, another parameter model, None, a
    bare id, text."""
    others: list[object] = [
        CasCompleteParams(turn_id=uuid4(), assistant_message_id=uuid4()),
        user_turn(uuid4()),
    ]
    others = [o for o in others if type(o) is not type(valid)]
    return st.sampled_from([None, valid.model_dump(), "params", 1, uuid4(), *others])


def repository_calls(seeded: Seeded) -> dict[str, list[tuple[object, st.SearchStrategy[object]]]]:
    """For each method: its arguments after the runner, each as (valid value, hostile)."""
    completed, running = seeded.completed, seeded.running
    create = user_turn(uuid4())
    fail = CasTerminalParams(turn_id=running.id, state=TurnState.FAILED, error_code="e")
    complete = CasCompleteParams(turn_id=running.id, assistant_message_id=uuid4())
    preflight = UpdatePreflightParams(
        turn_id=running.id,
        reserve_tokens=10,
        max_output_tokens_applied=5,
        reserved_credits_micro=1,
        policy_version_applied=1,
        effective_model="m",
        minimal_generation_floor_applied=1,
    )
    scope = (SCOPE, scope_hostile())
    return {
        "create_turn": [scope, (create, _params_hostile(create))],
        "find_by_chat_and_request_id": [
            scope,
            (completed.tenant_id, _ID),
            (COMPLETED_CHAT, _ID),
            (completed.request_id, _ID),
        ],
        "find_running_by_chat_id": [scope, (running.tenant_id, _ID), (RUNNING_CHAT, _ID)],
        "cas_update_state": [scope, (fail, _params_hostile(fail))],
        "cas_update_completed": [scope, (complete, _params_hostile(complete))],
        "set_assistant_message_id": [scope, (completed.id, _ID), (uuid4(), _ID)],
        "soft_delete": [scope, (completed.id, _ID), (None, _OPTIONAL_ID)],
        "find_latest_turn": [scope, (completed.tenant_id, _ID), (COMPLETED_CHAT, _ID)],
        "update_progress_at": [scope, (running.id, _ID)],
        "find_orphan_candidates": [(0, int_hostile(0, INT4_MAX)), (10, int_hostile(1, INT4_MAX))],
        "cas_finalize_orphan": [(running.id, _ID), (0, int_hostile(0, INT4_MAX))],
        "find_latest_for_update": [scope, (completed.tenant_id, _ID), (COMPLETED_CHAT, _ID)],
        "update_preflight_fields": [scope, (preflight, _params_hostile(preflight))],
        "increment_tool_calls": [scope, (running.id, _ID), (ToolCallType.WEB_SEARCH, _TOOL)],
    }


@hostile_settings(examples=500)
@given(data=st.data())
async def test_every_repository_method_refuses_a_hostile_argument_and_writes_nothing(
    seeded: Seeded, data: st.DataObject
) -> None:
    calls = repository_calls(seeded)
    name = data.draw(st.sampled_from(sorted(calls)), label="method")
    slots = calls[name]
    broken = data.draw(st.integers(0, len(slots) - 1), label="argument")
    args = [
        data.draw(hostile, label=f"argument {i}") if i == broken else valid
        for i, (valid, hostile) in enumerate(slots)
    ]
    store = seeded.store
    method = getattr(store.turns, name)

    async def call() -> object:
        async with store.connection() as conn:
            return await method(conn, *args)

    await refused_writing_nothing(seeded, call, invalid_parameter=True)


# --------------------------------------------------------------------------- the lifecycle

_HOOK = st.sampled_from(["hook", 1, True, object()])


def _turn_hostile(turn: Turn) -> st.SearchStrategy[object]:
    forged = Turn.model_construct(**{**turn.__dict__, "id": str(turn.id)})
    return st.sampled_from([turn.id, turn.model_dump(), None, str(turn.id), forged, SCOPE])


#: Keyword arguments of the lifecycle that become fields of a parameter model.
_MODEL_FIELDS = {"assistant_message_id", "error_code", "error_detail", "provider_response_id"}


def lifecycle_calls(
    seeded: Seeded,
) -> dict[str, list[tuple[str, object, st.SearchStrategy[object]]]]:
    """For each method: (keyword, valid value, hostile) for every argument."""
    completed, running = seeded.completed, seeded.running
    scope = ("scope", SCOPE, scope_hostile())
    mutation: list[tuple[str, object, st.SearchStrategy[object]]] = [
        scope,
        ("tenant_id", completed.tenant_id, _ID),
        ("chat_id", COMPLETED_CHAT, _ID),
        ("request_id", completed.request_id, _ID),
        ("actor_user_id", USER, _OPTIONAL_ID),
        ("hook", None, _HOOK),
    ]
    new_turn: list[tuple[str, object, st.SearchStrategy[object]]] = [
        ("new_turn_id", None, _OPTIONAL_ID),
        ("new_request_id", None, _OPTIONAL_ID),
    ]
    create = user_turn(uuid4())
    return {
        "begin_turn": [scope, ("params", create, _params_hostile(create))],
        "complete_turn": [
            scope,
            ("turn", running, _turn_hostile(running)),
            ("assistant_message_id", uuid4(), _ID),
            ("provider_response_id", None, text_hostile(128)),
            ("hook", None, _HOOK),
        ],
        "fail_turn": [
            scope,
            ("turn", running, _turn_hostile(running)),
            ("error_code", "e", text_hostile(64)),
            ("error_detail", None, text_hostile(MAX_ERROR_DETAIL_CHARS, min_chars=0)),
            ("hook", None, _HOOK),
        ],
        "cancel_turn": [scope, ("turn", running, _turn_hostile(running)), ("hook", None, _HOOK)],
        "retry_turn": mutation + new_turn,
        "edit_turn": mutation + new_turn,
        "delete_turn": mutation,
        "keep_alive": [
            scope,
            ("turn_id", running.id, _ID),
            (
                "settings",
                None,
                st.sampled_from([{"interval_secs": 1}, 30, "fast", KeepAliveSettings]),
            ),
        ],
    }


@hostile_settings(examples=500)
@given(data=st.data())
async def test_every_lifecycle_method_refuses_a_hostile_argument_and_writes_nothing(
    seeded: Seeded, data: st.DataObject
) -> None:
    calls = lifecycle_calls(seeded)
    name = data.draw(st.sampled_from(sorted(calls)), label="method")
    slots = calls[name]
    broken = data.draw(st.integers(0, len(slots) - 1), label="argument")
    kwargs = {
        key: data.draw(hostile, label=key) if i == broken else valid
        for i, (key, valid, hostile) in enumerate(slots)
    }
    lc: TurnLifecycle[Any] = TurnLifecycle(seeded.store)
    method = getattr(lc, name)

    async def call() -> object:
        result = method(**kwargs)
        return await result if name != "keep_alive" else result

    await refused_writing_nothing(
        seeded, call, invalid_parameter=slots[broken][0] not in _MODEL_FIELDS
    )


# --------------------------------------------------------------------------- the watchdog

_WATCHDOG_ARGS: dict[str, st.SearchStrategy[object]] = {
    "settings": st.sampled_from([{"batch_limit": 1}, 60, "fast", WatchdogSettings]),
    "settlement_hook": _HOOK,
    "metrics": st.sampled_from(["metrics", 1, object(), lambda turn: None]),
}


@hostile_settings(examples=100)
@given(data=st.data())
async def test_the_watchdog_refuses_hostile_arguments_and_writes_nothing(
    seeded: Seeded, data: st.DataObject
) -> None:
    key = data.draw(st.sampled_from(sorted(_WATCHDOG_ARGS)), label="argument")
    value = data.draw(_WATCHDOG_ARGS[key], label=key)
    await seeded.backend.advance_time(3600)  # the running turn is an orphan: a scan would write
    before = await table_state(seeded.backend)

    async def call() -> object:
        kwargs: dict[str, Any] = {key: value}
        return await OrphanWatchdog(seeded.store, **kwargs).run_once()

    await refused(call, invalid_parameter=True)
    assert await table_state(seeded.backend) == before


@hostile_settings(examples=100)
@given(data=st.data())
async def test_watchdog_settings_refuse_hostile_values(seeded: Seeded, data: st.DataObject) -> None:
    fields = {
        "orphan_timeout_secs": int_hostile(60, 3600),
        "scan_interval_secs": seconds_hostile(3600.0),
        "batch_limit": int_hostile(1, 10_000),
    }
    key = data.draw(st.sampled_from(sorted(fields)), label="field")
    value = data.draw(fields[key], label=key)

    async def call() -> object:
        kwargs: dict[str, Any] = {key: value}
        return await OrphanWatchdog(seeded.store, WatchdogSettings(**kwargs)).run_once()

    await refused_writing_nothing(seeded, call, invalid_parameter=False)


# --------------------------------------------------------------------------- PostgreSQL doors

_POISON = st.sampled_from(["\x00", "\udcff", "\ud800"])
_DSN_HOSTILE = st.builds(
    lambda dsn, bad: dsn + bad, st.just("dbname=x "), _POISON
) | st.sampled_from([None, b"dbname=x", 5, "not a dsn", "host='unterminated", ["dbname=x"]])
_OPEN_ARGS: dict[str, st.SearchStrategy[object]] = {
    "dsn": _DSN_HOSTILE,
    "schema": schema_hostile(),
    "min_size": int_hostile(0, 10_000),
    "max_size": int_hostile(1, 10_000),
    "timeout": seconds_hostile(86_400.0),
    "verify_schema": bool_hostile(),
}


async def _schemas(dsn: str) -> list[str]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT nspname FROM pg_namespace ORDER BY 1")
        return [str(row[0]) for row in await cur.fetchall()]


@pytest.mark.parametrize("turnstore_backend_name", ["postgres"])
@hostile_settings(examples=300)
@given(data=st.data())
async def test_postgres_doors_refuse_hostile_arguments_before_touching_the_server(
    seeded: Seeded, turnstore_pg_dsn: str, data: st.DataObject
) -> None:
    door = data.draw(st.sampled_from(["open", "constructor", "migrate", "check_schema"]))
    store: PostgresStore = seeded.store
    before = await _schemas(turnstore_pg_dsn)
    if door == "open":
        key = data.draw(st.sampled_from(sorted(_OPEN_ARGS)), label="argument")
        kwargs: dict[str, Any] = {"dsn": turnstore_pg_dsn, key: data.draw(_OPEN_ARGS[key])}

        async def call() -> object:
            opened = await PostgresStore.open(**kwargs)
            await opened.close()
            return opened

    elif door == "constructor":
        key = data.draw(st.sampled_from(["pool", "schema", "dsn", "owns_pool"]), label="argument")
        hostile = {
            "pool": st.sampled_from([None, "pool", turnstore_pg_dsn, store]),
            "schema": schema_hostile(),
            "dsn": _DSN_HOSTILE.filter(lambda value: value is not None),
            "owns_pool": bool_hostile(),
        }[key]
        kwargs = {"pool": store.pool, key: data.draw(hostile)}

        async def call() -> object:
            return PostgresStore(**kwargs)

    else:
        schema = data.draw(schema_hostile(), label="schema")
        function = migrate if door == "migrate" else check_schema

        async def call() -> object:
            async with await psycopg.AsyncConnection.connect(
                turnstore_pg_dsn, autocommit=True
            ) as conn:
                return await function(conn, schema=schema)  # type: ignore[arg-type]

    error = await refused_writing_nothing(seeded, call, invalid_parameter=True)
    assert isinstance(error, TurnStoreError)
    assert await _schemas(turnstore_pg_dsn) == before
