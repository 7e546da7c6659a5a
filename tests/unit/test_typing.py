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
from uuid import uuid4

import psycopg
import psycopg_pool
from typing_extensions import assert_type, get_original_bases, get_protocol_members, is_protocol

import turnstore
from turnstore import (
    TurnRepository,
    TurnStore,
)
from turnstore.memory import InMemoryConnection, InMemoryStore, InMemoryTurnRepository
from turnstore.postgres import PostgresStore, PostgresTurnRepository
from typing_support import exercise

#: The PostgreSQL runner, as a user annotates it.
Connection = psycopg.AsyncConnection[Any]

PUBLIC_NAMES = {
    "AccessScope",
    "AdvisoryLockElection",
    "CasCompleteParams",
    "CasTerminalParams",
    "CreateTurnParams",
    "DuplicateRequestError",
    "DuplicateTurnIdError",
    "FinalizeOutcome",
    "ForbiddenError",
    "GenerationInProgressError",
    "InMemoryStore",
    "InMemoryTurnRepository",
    "InProcessElection",
    "InvalidParameterError",
    "InvalidTurnStateError",
    "KeepAlive",
    "KeepAliveSettings",
    "LeaderElection",
    "MigrationError",
    "MutationKind",
    "MutationResult",
    "NotLatestTurnError",
    "OrphanWatchdog",
    "PostgresStore",
    "PostgresTurnRepository",
    "RejectReason",
    "RequestFingerprintMismatchError",
    "RequestInProgressError",
    "RequesterType",
    "SchemaMismatchError",
    "SchemaLayoutError",
    "SchemaStatus",
    "ScopeConstraint",
    "ScopeDeniedError",
    "ScopeFilter",
    "StartKind",
    "StartOutcome",
    "StoreUnavailableError",
    "StoreClosedError",
    "StatementTimeoutError",
    "PreparedStatementsLostError",
    "PoolTimeoutError",
    "PoolDeadlockError",
    "LockTimeoutError",
    "SweepReport",
    "ToolCallType",
    "Turn",
    "TurnLifecycle",
    "TurnNotFoundError",
    "TurnPage",
    "TurnRepository",
    "TurnState",
    "TurnStore",
    "TurnStoreError",
    "UpdatePreflightParams",
    "WatchdogMetrics",
    "WatchdogSettings",
    "check_schema",
    "migrate",
    "new_uuid7",
    "schema_sql",
    "__version__",
    "request_fingerprint",
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
    assert len(get_protocol_members(TurnRepository)) == 21


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


async def test_the_protocol_runs_on_the_in_memory_store() -> None:
    store: TurnStore[InMemoryConnection] = InMemoryStore()
    await store.migrate()
    await exercise(store, uuid4(), uuid4())
    await store.close()
