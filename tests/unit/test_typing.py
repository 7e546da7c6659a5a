"""What users see of turnstore's types, checked by ``mypy --strict`` and run by pytest.

The functions below are type-checked like any user code: both backends must be assignable
to the ``TurnRepository`` / ``TurnStore`` protocols for their own runner, every method
must return what the protocol promises (``assert_type``), and a backend must *not* be
assignable for the other backend's runner (the ``type: ignore`` comments would be reported
as unused by ``warn_unused_ignores`` if it were). Under pytest the same code runs against
the in-memory store, so none of it is dead.
"""

from __future__ import annotations

import inspect
from typing import Any, TypeVar, get_args
from uuid import UUID, uuid4

import psycopg
import psycopg_pool
from typing_extensions import assert_type, get_original_bases, get_protocol_members, is_protocol

import turnstore
from turnstore import (
    AccessScope,
    CasCompleteParams,
    CasTerminalParams,
    CreateTurnParams,
    RequesterType,
    ToolCallType,
    Turn,
    TurnRepository,
    TurnState,
    TurnStore,
    UpdatePreflightParams,
)
from turnstore.memory import InMemoryConnection, InMemoryStore, InMemoryTurnRepository
from turnstore.postgres import PostgresStore, PostgresTurnRepository

RunnerT = TypeVar("RunnerT")
#: The PostgreSQL runner, as a user annotates it.
Connection = psycopg.AsyncConnection[Any]

PUBLIC_NAMES = {
    "AccessScope",
    "CasCompleteParams",
    "CasTerminalParams",
    "CreateTurnParams",
    "DuplicateRequestError",
    "DuplicateTurnIdError",
    "ForbiddenError",
    "GenerationInProgressError",
    "InvalidParameterError",
    "InvalidTurnStateError",
    "MigrationError",
    "NotLatestTurnError",
    "RequesterType",
    "SchemaMismatchError",
    "ScopeConstraint",
    "ScopeDeniedError",
    "ScopeFilter",
    "StoreUnavailableError",
    "ToolCallType",
    "Turn",
    "TurnNotFoundError",
    "TurnRepository",
    "TurnState",
    "TurnStore",
    "TurnStoreError",
    "UpdatePreflightParams",
    "__version__",
}


def test_public_names_are_exactly_all() -> None:
    assert len(turnstore.__all__) == len(set(turnstore.__all__))
    assert set(turnstore.__all__) == PUBLIC_NAMES
    namespace: dict[str, Any] = {}
    exec("from turnstore import *", namespace)
    assert set(namespace) - {"__builtins__"} == PUBLIC_NAMES


def test_every_error_derives_from_the_base() -> None:
    errors = [getattr(turnstore, n) for n in PUBLIC_NAMES if n.endswith("Error")]
    assert errors
    assert all(issubclass(e, turnstore.TurnStoreError) for e in errors)


def test_repository_and_store_are_protocols_generic_in_the_runner() -> None:
    for protocol in (TurnRepository, TurnStore):
        assert is_protocol(protocol)
        (base,) = get_original_bases(protocol)
        (runner,) = get_args(base)
        assert isinstance(runner, TypeVar)
    # A repository only consumes runners, so it is contravariant in them.
    (base,) = get_original_bases(TurnRepository)
    assert get_args(base)[0].__contravariant__
    assert len(get_protocol_members(TurnRepository)) == 14


def test_backends_take_the_protocol_parameters_by_the_same_names() -> None:
    """A host calling with keywords must not notice which backend it has."""
    for name in get_protocol_members(TurnRepository):
        expected = list(inspect.signature(getattr(TurnRepository, name)).parameters)
        for backend in (PostgresTurnRepository, InMemoryTurnRepository):
            method = getattr(backend, name)
            assert inspect.iscoroutinefunction(method), (backend, name)
            assert list(inspect.signature(method).parameters) == expected, (backend, name)


# --- checked by mypy -------------------------------------------------------------------------


def _unopened_postgres_store() -> PostgresStore:
    """A store over a pool that never connects: enough for the type checks to run."""
    pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool("", open=False)
    return PostgresStore(pool)


def test_backends_satisfy_the_protocols() -> None:
    pg_repo: TurnRepository[Connection] = PostgresTurnRepository()
    mem_repo: TurnRepository[InMemoryConnection] = InMemoryTurnRepository()
    pg_store: TurnStore[Connection] = _unopened_postgres_store()
    mem_store: TurnStore[InMemoryConnection] = InMemoryStore()
    assert_type(pg_store.turns, TurnRepository[Connection])
    assert_type(mem_store.turns, TurnRepository[InMemoryConnection])
    assert isinstance(pg_store.turns, PostgresTurnRepository)
    assert isinstance(mem_store.turns, InMemoryTurnRepository)
    assert {pg_repo.__class__, mem_repo.__class__} == {
        PostgresTurnRepository,
        InMemoryTurnRepository,
    }


def test_a_backend_does_not_accept_the_other_backends_runner() -> None:
    wrong_repo: TurnRepository[InMemoryConnection] = PostgresTurnRepository()  # type: ignore[assignment]
    wrong_store: TurnStore[Connection] = InMemoryStore()  # type: ignore[assignment]
    assert wrong_repo is not None
    assert wrong_store is not None


async def test_concrete_stores_hand_out_their_own_runner_and_repository() -> None:
    pg = _unopened_postgres_store()
    assert_type(pg.turns, PostgresTurnRepository)
    mem = InMemoryStore()
    assert_type(mem.turns, InMemoryTurnRepository)
    async with mem.transaction() as runner:
        assert_type(runner, InMemoryConnection)
    async with mem.connection() as runner:
        assert_type(runner, InMemoryConnection)
    assert isinstance(runner, InMemoryConnection)


async def _exercise(store: TurnStore[RunnerT], tenant: UUID, user: UUID) -> None:
    """Every method through the protocol, with the return type it promises."""
    repo = store.turns
    scope = AccessScope.for_tenant(tenant)
    chat, request = uuid4(), uuid4()
    params = CreateTurnParams(
        id=uuid4(),
        tenant_id=tenant,
        chat_id=chat,
        request_id=request,
        requester_type=RequesterType.USER,
        requester_user_id=user,
    )
    async with store.transaction() as runner:
        assert_type(runner, RunnerT)
        turn = await repo.create_turn(runner, scope, params)
        assert_type(turn, Turn)
        found = await repo.find_by_chat_and_request_id(runner, scope, chat, request)
        assert_type(found, Turn | None)
        running = await repo.find_running_by_chat_id(runner, scope, chat)
        assert_type(running, Turn | None)
        touched = await repo.update_progress_at(runner, scope, turn.id)
        assert_type(touched, int)
        preflight = UpdatePreflightParams(
            turn_id=turn.id,
            reserve_tokens=10,
            max_output_tokens_applied=5,
            reserved_credits_micro=1,
            policy_version_applied=1,
            effective_model="m",
            minimal_generation_floor_applied=1,
        )
        assert_type(await repo.update_preflight_fields(runner, scope, preflight), int)
        await repo.increment_tool_calls(runner, scope, turn.id, ToolCallType.WEB_SEARCH)
        await repo.set_assistant_message_id(runner, scope, turn.id, uuid4())
        orphans = await repo.find_orphan_candidates(runner, 60, 10)
        assert_type(orphans, list[Turn])
        assert_type(await repo.cas_finalize_orphan(runner, turn.id, 60), int)
        complete = CasCompleteParams(turn_id=turn.id, assistant_message_id=uuid4())
        assert_type(await repo.cas_update_completed(runner, scope, complete), int)
        cancel = CasTerminalParams(turn_id=turn.id, state=TurnState.CANCELLED)
        assert_type(await repo.cas_update_state(runner, scope, cancel), int)
        assert_type(await repo.find_latest_turn(runner, scope, chat), Turn | None)
        assert_type(await repo.find_latest_for_update(runner, scope, chat), Turn | None)
        await repo.soft_delete(runner, scope, turn.id, None)
    async with store.connection() as runner:
        assert_type(runner, RunnerT)
        after = await repo.find_by_chat_and_request_id(runner, scope, chat, request)
    assert found == turn
    assert running == turn
    assert (touched, orphans) == (1, [])
    assert after is not None
    assert after.state is TurnState.COMPLETED
    assert after.deleted_at is not None


async def test_the_protocol_runs_on_the_in_memory_store() -> None:
    store: TurnStore[InMemoryConnection] = InMemoryStore()
    await store.migrate()
    await _exercise(store, uuid4(), uuid4())
    await store.close()


async def test_the_protocol_runs_on_postgres(turnstore_postgres_store: PostgresStore) -> None:
    async with turnstore_postgres_store.transaction() as conn:
        assert_type(conn, Connection)
    async with turnstore_postgres_store.connection() as conn:
        assert_type(conn, Connection)
    assert isinstance(conn, psycopg.AsyncConnection)
    store: TurnStore[Connection] = turnstore_postgres_store
    await _exercise(store, uuid4(), uuid4())
