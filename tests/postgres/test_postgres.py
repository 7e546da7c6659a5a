"""PostgreSQL-specific tests of ``turnstore.postgres``: what only this backend has.

The backend-neutral behaviour of the 14 repository methods is the conformance suite's job; this
module covers the compiled scope, the chat lock of ``find_latest_for_update`` (the trap of
docs/design.md, *The latest-turn lock*), the transaction staying usable after typed errors, the
single clock reading per statement, driver-error mapping, and the store's pool handling.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import UUID

import psycopg
import psycopg_pool
import pytest
import pytest_asyncio
from psycopg.pq import TransactionStatus

from turnstore import (
    AccessScope,
    CasCompleteParams,
    CasTerminalParams,
    CreateTurnParams,
    DuplicateRequestError,
    DuplicateTurnIdError,
    GenerationInProgressError,
    InvalidParameterError,
    PoolDeadlockError,
    RequesterType,
    ScopeConstraint,
    ScopeDeniedError,
    ScopeFilter,
    StoreClosedError,
    StoreUnavailableError,
    ToolCallType,
    Turn,
    TurnNotFoundError,
    TurnState,
    TurnStoreError,
)
from turnstore.postgres import (
    CHAT_LOCK_CLASS,
    PostgresStore,
    PostgresTurnRepository,
    compile_scope,
)
from turnstore.repository import TurnRepository, TurnStore

Conn = psycopg.AsyncConnection[Any]
ALLOW = AccessScope.allow_all()
HANG_TIMEOUT = 30.0


def _params(**overrides: Any) -> CreateTurnParams:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "tenant_id": uuid.uuid4(),
        "chat_id": uuid.uuid4(),
        "request_id": uuid.uuid4(),
        "requester_type": RequesterType.SYSTEM,
    }
    values.update(overrides)
    return CreateTurnParams(**values)


def _complete(turn: Turn) -> CasCompleteParams:
    return CasCompleteParams(turn_id=turn.id, assistant_message_id=uuid.uuid4())


@pytest_asyncio.fixture
async def store(turnstore_postgres_store: PostgresStore) -> PostgresStore:
    return turnstore_postgres_store


@pytest_asyncio.fixture
async def other(turnstore_pg_dsn: str) -> AsyncIterator[Conn]:
    """A second, independent autocommit connection to the test database."""
    async with await psycopg.AsyncConnection.connect(turnstore_pg_dsn, autocommit=True) as conn:
        yield conn


def test_backend_satisfies_the_protocols(store: PostgresStore) -> None:
    repo: TurnRepository[Conn] = store.turns
    typed_store: TurnStore[Conn] = store
    assert repo is typed_store.turns
    assert isinstance(store.turns, PostgresTurnRepository)
    assert store.schema == "turnstore"
    assert store.dsn is not None


async def test_create_find_complete_round_trip(store: PostgresStore) -> None:
    params = _params()
    scope = AccessScope.for_tenant(params.tenant_id)
    async with store.transaction() as conn:
        created = await store.turns.create_turn(conn, scope, params)
        assert created.state is TurnState.RUNNING
        assert created.requester_type is RequesterType.SYSTEM
        assert isinstance(created.id, UUID)
        assert created.started_at.tzinfo is not None
        assert await store.turns.cas_update_completed(conn, scope, _complete(created)) == 1
    async with store.connection() as conn:
        found = await store.turns.find_by_chat_and_request_id(
            conn, scope, params.tenant_id, params.chat_id, params.request_id
        )
    assert found is not None
    assert found.state is TurnState.COMPLETED
    assert found == Turn.model_validate(found.model_dump())  # rows build valid models


# --- one clock reading per statement -----------------------------------------------------


async def test_each_statement_reads_the_clock_once(store: PostgresStore) -> None:
    async with store.transaction() as conn:
        turn = await store.turns.create_turn(conn, ALLOW, _params())
        assert turn.started_at == turn.last_progress_at == turn.updated_at
        await store.turns.update_progress_at(conn, ALLOW, turn.id)
        touched = await store.turns.find_latest_turn(conn, ALLOW, turn.tenant_id, turn.chat_id)
        assert touched is not None
        assert touched.last_progress_at == touched.updated_at
        assert touched.updated_at > turn.updated_at  # later statement, later time
        await store.turns.cas_update_state(
            conn,
            ALLOW,
            CasTerminalParams(turn_id=turn.id, state=TurnState.FAILED, error_code="e"),
        )
        done = await store.turns.find_by_chat_and_request_id(
            conn, ALLOW, turn.tenant_id, turn.chat_id, turn.request_id
        )
    assert done is not None
    assert done.completed_at == done.updated_at
    assert done.completed_at is not None
    assert done.completed_at > touched.updated_at


# --- scope compilation -------------------------------------------------------------------

A, B, C = (UUID(int=i) for i in (1, 2, 3))


def test_compile_scope_shapes() -> None:
    assert compile_scope(AccessScope.allow_all()) == ("TRUE", ())
    assert compile_scope(AccessScope.deny_all()) == ("FALSE", ())
    assert compile_scope(AccessScope.for_tenant(A)) == ('("tenant_id" = %s)', (A,))
    assert compile_scope(AccessScope.for_resources([A, B])) == ('("id" = ANY(%s))', ([A, B],))
    unknown = ScopeConstraint([ScopeFilter.eq("owner_tenant_id", A), ScopeFilter.eq("x", B)])
    assert compile_scope(AccessScope.from_constraints([unknown])) == ("FALSE", ())
    empty_in = ScopeConstraint([ScopeFilter.in_("id", [])])
    assert compile_scope(AccessScope.from_constraints([empty_in])) == ("FALSE", ())
    both = AccessScope.from_constraints(
        [
            unknown,
            ScopeConstraint([ScopeFilter.eq("owner_tenant_id", A), ScopeFilter.in_("id", [B])]),
            ScopeConstraint([ScopeFilter.eq("id", C)]),
        ]
    )
    assert compile_scope(both) == (
        '("tenant_id" = %s AND "id" = ANY(%s)) OR ("id" = %s)',
        (A, [B], C),
    )
    with pytest.raises(InvalidParameterError):
        compile_scope("tenant_id = tenant_id")  # type: ignore[arg-type]


_HOSTILE = 'owner_tenant_id" OR TRUE OR "x'


async def test_compiled_scopes_select_exactly_what_permits_allows(store: PostgresStore) -> None:
    """The SQL filter and the pure ``permits`` agree row for row, for hostile names too."""
    tenants = [uuid.uuid4() for _ in range(3)]
    async with store.connection() as conn:
        turns = [
            await store.turns.create_turn(conn, ALLOW, _params(tenant_id=t))
            for t in tenants
            for _ in range(2)
        ]
    ids = [t.id for t in turns]
    scopes = [
        AccessScope.allow_all(),
        AccessScope.deny_all(),
        AccessScope.for_tenant(tenants[0]),
        AccessScope.for_tenants(tenants[1:]),
        AccessScope.for_tenants([]),
        AccessScope.for_resource(ids[0]),
        AccessScope.for_resources([ids[1], ids[4], uuid.uuid4()]),
        AccessScope.from_constraints(
            [
                ScopeConstraint([ScopeFilter.eq(_HOSTILE, tenants[0])]),
                ScopeConstraint([ScopeFilter.eq("tenant_id", tenants[0])]),  # a column name
                ScopeConstraint(
                    [
                        ScopeFilter.eq("owner_tenant_id", tenants[2]),
                        ScopeFilter.in_("id", [ids[5], ids[0]]),
                    ]
                ),
                ScopeConstraint([ScopeFilter.in_("id", [ids[2]])]),
            ]
        ),
        AccessScope.from_constraints([ScopeConstraint([ScopeFilter.eq(_HOSTILE, tenants[1])])]),
    ]
    async with store.connection() as conn:
        for scope in scopes:
            scope_sql, scope_params = compile_scope(scope)
            assert _HOSTILE not in scope_sql
            for value in (*tenants, *ids):
                assert str(value) not in scope_sql  # values only as parameters
            cur = await conn.execute(
                "SELECT id FROM turnstore.chat_turns WHERE " + scope_sql + " ORDER BY id",
                scope_params,
            )
            selected = [row[0] for row in await cur.fetchall()]
            assert selected == sorted(t.id for t in turns if scope.permits(t)), scope
            for turn in turns:
                found = await store.turns.find_latest_turn(
                    conn, scope, turn.tenant_id, turn.chat_id
                )
                assert (found is not None) == scope.permits(turn), scope


async def test_running_turn_id_is_hidden_outside_the_scope(store: PostgresStore) -> None:
    tenant = uuid.uuid4()
    async with store.connection() as conn:
        running = await store.turns.create_turn(conn, ALLOW, _params(tenant_id=tenant))
        hidden_params = _params(tenant_id=tenant, chat_id=running.chat_id)
        with pytest.raises(GenerationInProgressError) as hidden:
            await store.turns.create_turn(
                conn, AccessScope.for_resource(hidden_params.id), hidden_params
            )
        shown_params = _params(tenant_id=tenant, chat_id=running.chat_id)
        with pytest.raises(GenerationInProgressError) as shown:
            await store.turns.create_turn(
                conn, AccessScope.for_resources([shown_params.id, running.id]), shown_params
            )
    assert hidden.value.running_turn_id is None
    assert shown.value.running_turn_id == running.id


# --- typed errors leave the transaction usable -------------------------------------------


async def test_transaction_stays_usable_after_every_typed_error(store: PostgresStore) -> None:
    repo = store.turns
    async with store.transaction() as conn:
        turn = await repo.create_turn(conn, ALLOW, _params())
        attempts: list[tuple[type[Exception], Callable[[], Awaitable[object]]]] = [
            (DuplicateTurnIdError, lambda: repo.create_turn(conn, ALLOW, _params(id=turn.id))),
            (
                DuplicateRequestError,
                lambda: repo.create_turn(
                    conn,
                    ALLOW,
                    _params(
                        chat_id=turn.chat_id, tenant_id=turn.tenant_id, request_id=turn.request_id
                    ),
                ),
            ),
            (
                GenerationInProgressError,
                lambda: repo.create_turn(
                    conn, ALLOW, _params(chat_id=turn.chat_id, tenant_id=turn.tenant_id)
                ),
            ),
            (ScopeDeniedError, lambda: repo.create_turn(conn, AccessScope.deny_all(), _params())),
            (TurnNotFoundError, lambda: repo.soft_delete(conn, ALLOW, uuid.uuid4(), None)),
            (
                TurnNotFoundError,
                lambda: repo.set_assistant_message_id(
                    conn, AccessScope.deny_all(), turn.id, uuid.uuid4()
                ),
            ),
            (InvalidParameterError, lambda: repo.find_orphan_candidates(conn, -1, 10)),
            (InvalidParameterError, lambda: repo.find_orphan_candidates(conn, 10, 0)),
            (InvalidParameterError, lambda: repo.cas_finalize_orphan(conn, turn.id, True)),
            (InvalidParameterError, lambda: repo.update_progress_at(conn, ALLOW, str(turn.id))),  # type: ignore[arg-type]
            (
                InvalidParameterError,
                lambda: repo.increment_tool_calls(conn, ALLOW, turn.id, "bogus"),  # type: ignore[arg-type]
            ),
        ]
        for error, call in attempts:
            with pytest.raises(error):
                await call()
            assert conn.info.transaction_status == TransactionStatus.INTRANS
        assert await repo.cas_update_completed(conn, ALLOW, _complete(turn)) == 1
    async with store.connection() as conn:
        done = await repo.find_latest_turn(conn, ALLOW, turn.tenant_id, turn.chat_id)
    assert done is not None
    assert done.state is TurnState.COMPLETED


async def test_each_tool_bumps_only_its_own_counter(store: PostgresStore) -> None:
    async with store.connection() as conn:
        turn = await store.turns.create_turn(conn, ALLOW, _params())
        for tool, times in zip(ToolCallType, (1, 2, 3), strict=True):
            for _ in range(times):
                await store.turns.increment_tool_calls(conn, ALLOW, turn.id, tool)
        counted = await store.turns.find_latest_turn(conn, ALLOW, turn.tenant_id, turn.chat_id)
    assert counted is not None
    assert (
        counted.web_search_completed_count,
        counted.code_interpreter_completed_count,
        counted.file_search_completed_count,
    ) == (1, 2, 3)


# --- driver-error mapping ----------------------------------------------------------------


async def test_unique_violations_map_by_constraint_name(store: PostgresStore) -> None:
    from turnstore.postgres.errors import driver_errors

    insert = (
        "INSERT INTO turnstore.chat_turns (id, tenant_id, chat_id, request_id, requester_type,"
        " state, started_at, last_progress_at, updated_at)"
        " SELECT id, tenant_id, %s, %s, requester_type, 'running', now(), now(), now()"
        " FROM turnstore.chat_turns WHERE id = %s"
    )
    async with store.connection() as conn:
        turn = await store.turns.create_turn(conn, ALLOW, _params())
        with pytest.raises(DuplicateTurnIdError) as by_id, driver_errors:
            await conn.execute(insert, (uuid.uuid4(), uuid.uuid4(), turn.id))
        assert by_id.value.turn_id == turn.id
        assert isinstance(by_id.value.__cause__, psycopg.errors.UniqueViolation)
        clash = insert.replace("SELECT id,", "SELECT gen_random_uuid(),")
        with pytest.raises(DuplicateRequestError) as by_request, driver_errors:
            await conn.execute(clash, (turn.chat_id, turn.request_id, turn.id))
        assert (by_request.value.chat_id, by_request.value.request_id) == (
            turn.chat_id,
            turn.request_id,
        )
        with pytest.raises(GenerationInProgressError) as running, driver_errors:
            await conn.execute(clash, (turn.chat_id, uuid.uuid4(), turn.id))
        assert running.value.chat_id == turn.chat_id
        with pytest.raises(psycopg.errors.DivisionByZero), driver_errors:
            await conn.execute("SELECT 1/0")  # not ours: passes through unchanged


async def test_refused_connection_is_store_unavailable() -> None:
    with pytest.raises(StoreUnavailableError) as info:
        await PostgresStore.open("postgresql://postgres@127.0.0.1:1/none", timeout=1.0)
    assert info.value.__cause__ is not None


async def test_lost_connection_is_store_unavailable(store: PostgresStore, other: Conn) -> None:
    async with store.connection() as conn:
        await other.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        with pytest.raises(StoreUnavailableError) as info:
            await store.turns.find_latest_turn(conn, ALLOW, uuid.uuid4(), uuid.uuid4())
    assert isinstance(info.value.__cause__, psycopg.OperationalError)
    async with store.connection() as conn:  # the pool replaces the dead connection
        assert await store.turns.find_latest_turn(conn, ALLOW, uuid.uuid4(), uuid.uuid4()) is None


async def test_waiting_for_a_connection_the_task_holds_is_a_pool_deadlock(
    turnstore_pg_dsn: str,
) -> None:
    store = await PostgresStore.open(turnstore_pg_dsn, max_size=1, timeout=0.5)
    async with store, store.connection():
        with pytest.raises(PoolDeadlockError) as info:
            async with store.transaction():
                pass
    assert isinstance(info.value.__cause__, psycopg_pool.PoolTimeout)
    assert isinstance(info.value, StoreUnavailableError)  # what a host caught before


async def test_closed_store_is_store_closed_and_not_retryable(turnstore_pg_dsn: str) -> None:
    store = await PostgresStore.open(turnstore_pg_dsn)
    await store.close()
    with pytest.raises(StoreClosedError) as raised:
        async with store.connection():
            pass
    assert (raised.value.code, raised.value.retryable) == ("store_closed", False)
    assert isinstance(raised.value, StoreUnavailableError)
    with pytest.raises(StoreClosedError):
        async with store.transaction():
            pass


# --- the store over a host's pool --------------------------------------------------------


async def test_wrapping_a_host_pool(turnstore_pg_dsn: str, other: Conn) -> None:
    pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
        turnstore_pg_dsn, min_size=1, max_size=2, open=False
    )
    await pool.open(wait=True)
    try:
        store = PostgresStore(pool)
        assert (store.pool, store.dsn) == (pool, None)
        params = _params()
        async with store.connection() as conn:  # a non-autocommit host connection
            assert conn.autocommit
            await store.turns.create_turn(conn, ALLOW, params)
        seen = await store.turns.find_latest_turn(other, ALLOW, params.tenant_id, params.chat_id)
        assert seen is not None  # committed on its own, autocommit

        async def delete_then_fail() -> None:
            async with store.transaction() as conn:
                await store.turns.soft_delete(conn, ALLOW, params.id, None)
                raise RuntimeError("planted")

        with pytest.raises(RuntimeError, match="planted"):
            await delete_then_fail()
        assert (
            await store.turns.find_latest_turn(other, ALLOW, params.tenant_id, params.chat_id)
            == seen
        )
        async with store.transaction() as conn:
            await store.turns.soft_delete(conn, ALLOW, params.id, None)
        assert (
            await store.turns.find_latest_turn(other, ALLOW, params.tenant_id, params.chat_id)
            is None
        )
        await store.close()
        assert not pool.closed
        async with pool.connection() as conn:
            assert conn.autocommit is False  # handed back as the host configured it
    finally:
        await pool.close()


# --- find_latest_for_update: docs/design.md, The latest-turn lock ------------------------

NAIVE_LATEST_FOR_UPDATE = (
    "SELECT id FROM turnstore.chat_turns"
    " WHERE tenant_id = %s AND chat_id = %s AND deleted_at IS NULL"
    " ORDER BY started_at DESC, id DESC LIMIT 1 FOR UPDATE"
)


async def _wait_until_blocked(watcher: Conn, pid: int) -> None:
    """Poll ``pg_stat_activity`` until backend ``pid`` waits on a lock."""
    for _ in range(3000):
        cur = await watcher.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
        )
        row = await cur.fetchone()
        if row is not None and row[0] == "Lock":
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"backend {pid} never blocked")


async def _chat_with_two_finished_turns(store: PostgresStore) -> tuple[Turn, Turn]:
    """W then X, both completed, in one chat: X is the latest."""
    tenant, chat = uuid.uuid4(), uuid.uuid4()
    async with store.connection() as conn:
        w = await store.turns.create_turn(conn, ALLOW, _params(tenant_id=tenant, chat_id=chat))
        await store.turns.cas_update_completed(conn, ALLOW, _complete(w))
        x = await store.turns.create_turn(conn, ALLOW, _params(tenant_id=tenant, chat_id=chat))
        await store.turns.cas_update_completed(conn, ALLOW, _complete(x))
    return w, x


async def _replace_latest_while_b_waits(
    store: PostgresStore,
    other: Conn,
    lock_x: Any,
    b_reads: Any,
) -> tuple[Turn, Turn, Turn, Any]:
    """Transaction A locks X (``lock_x``), soft-deletes it and inserts Y; transaction B
    runs ``b_reads`` and must block; A commits; returns (W, X, Y, what B read)."""
    w, x = await _chat_with_two_finished_turns(store)
    async with store.transaction() as a:
        await lock_x(a, x)
        await store.turns.soft_delete(a, ALLOW, x.id, None)
        y = await store.turns.create_turn(
            a, ALLOW, _params(chat_id=x.chat_id, tenant_id=x.tenant_id)
        )
        await other.execute("BEGIN")
        b_task = asyncio.create_task(b_reads(other, x))
        await _wait_until_blocked(a, other.info.backend_pid)
        assert not b_task.done()
    read = await asyncio.wait_for(b_task, timeout=HANG_TIMEOUT)
    await other.execute("COMMIT")
    return w, x, y, read


async def _naive_read(conn: Conn, x: Turn) -> UUID | None:
    cur = await conn.execute(NAIVE_LATEST_FOR_UPDATE, (x.tenant_id, x.chat_id))
    row = await cur.fetchone()
    return row[0] if row is not None else None


async def test_the_naive_query_returns_a_stale_turn(store: PostgresStore, other: Conn) -> None:
    """The trap is real on this server: the obvious ``FOR UPDATE`` query, after waiting on
    a transaction that replaced X by Y, returns the older W. (If this ever stops holding,
    the next test no longer proves anything and must be revisited.)"""

    async def lock_x(a: Conn, x: Turn) -> None:
        assert await _naive_read(a, x) == x.id

    w, _, _, read = await _replace_latest_while_b_waits(store, other, lock_x, _naive_read)
    assert read == w.id


async def test_find_latest_for_update_returns_the_true_latest_after_waiting(
    store: PostgresStore, other: Conn
) -> None:
    async def lock_x(a: Conn, x: Turn) -> None:
        locked = await store.turns.find_latest_for_update(a, ALLOW, x.tenant_id, x.chat_id)
        assert locked is not None
        assert locked.id == x.id

    async def b_reads(b: Conn, x: Turn) -> Turn | None:
        return await store.turns.find_latest_for_update(b, ALLOW, x.tenant_id, x.chat_id)

    _, _, y, read = await _replace_latest_while_b_waits(store, other, lock_x, b_reads)
    assert read == y


async def test_find_latest_for_update_rereads_after_a_writer_that_skipped_the_chat_lock(
    store: PostgresStore, other: Conn
) -> None:
    """A writer that locked X with plain ``FOR UPDATE`` (no chat lock) still cannot make
    ``find_latest_for_update`` return a stale turn: it re-reads until stable."""

    async def lock_x(a: Conn, x: Turn) -> None:
        assert await _naive_read(a, x) == x.id

    async def b_reads(b: Conn, x: Turn) -> Turn | None:
        return await store.turns.find_latest_for_update(b, ALLOW, x.tenant_id, x.chat_id)

    _, _, y, read = await _replace_latest_while_b_waits(store, other, lock_x, b_reads)
    assert read is not None
    assert read.id == y.id


async def test_find_latest_for_update_holds_the_chat_lock_until_the_end(
    store: PostgresStore, other: Conn
) -> None:
    tenant, chat = uuid.uuid4(), uuid.uuid4()
    async with store.transaction() as conn:
        assert await store.turns.find_latest_for_update(conn, ALLOW, tenant, chat) is None
        cur = await other.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s"
            " AND objid = hashtext(%s::text || %s::text)::oid AND objsubid = 2 AND pid = %s"
            " AND granted",
            (CHAT_LOCK_CLASS, tenant, chat, conn.info.backend_pid),
        )
        assert await cur.fetchone() == (1,)
    # pg_locks is server-wide: count this database's chat locks only, so other databases
    # on a shared server cannot make this fail.
    cur = await other.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (CHAT_LOCK_CLASS,),
    )
    assert await cur.fetchone() == (0,)


async def test_typed_errors_share_one_base(store: PostgresStore) -> None:
    async with store.connection() as conn:
        with pytest.raises(TurnStoreError):
            await store.turns.soft_delete(conn, ALLOW, uuid.uuid4(), None)
