"""The PostgreSQL schema and its migrations: every constraint of ``turnstore/sql/0001`` refuses the
rows it exists to refuse (by name), and ``migrate`` / ``check_schema`` / ``schema_sql``
behave as documented, including concurrent runners and changed files."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
import pytest
import pytest_asyncio
from psycopg import sql
from psycopg.rows import tuple_row

import turnstore.postgres.migrations as pgm
from turnstore import (
    AccessScope,
    DuplicateRequestError,
    DuplicateTurnIdError,
    GenerationInProgressError,
    MigrationError,
    SchemaMismatchError,
    ToolCallType,
    TurnState,
)
from turnstore.embedded import temporary_database
from turnstore.postgres import (
    MIGRATION_LOCK_CLASS,
    Migration,
    PostgresStore,
    check_schema,
    migrate,
    migration_files,
    schema_sql,
)
from turnstore.postgres.errors import driver_errors
from turnstore.testing.conformance import (
    complete_params,
    make_params,
    preflight_params,
    terminal_params,
)

Conn = psycopg.AsyncConnection[Any]
ODD_SCHEMA = 'Turn "Store"'

# --- constraints -------------------------------------------------------------------------


def _row(**overrides: Any) -> dict[str, Any]:
    """A valid running ``chat_turns`` row; ``overrides`` break exactly one rule."""
    row: dict[str, Any] = {
        "id": uuid.uuid4(),
        "tenant_id": uuid.uuid4(),
        "chat_id": uuid.uuid4(),
        "request_id": uuid.uuid4(),
        "requester_type": "user",
        "requester_user_id": uuid.uuid4(),
        "state": "running",
        "error_code": None,
        "started_at": "2026-01-01T00:00:00Z",
        "last_progress_at": "2026-01-01T00:00:00Z",
        "completed_at": None,
        "updated_at": "2026-01-01T00:00:00Z",
        "deleted_at": None,
    }
    row.update(overrides)
    return row


_PREFLIGHT = {
    "reserve_tokens": 100,
    "max_output_tokens_applied": 50,
    "reserved_credits_micro": 10,
    "policy_version_applied": 1,
    "effective_model": "m",
    "minimal_generation_floor_applied": 5,
}
_TERMINAL = {"state": "completed", "completed_at": "2026-01-01T00:00:01Z"}


async def _insert(conn: Conn, row: dict[str, Any]) -> None:
    query = sql.SQL("INSERT INTO turnstore.chat_turns ({}) VALUES ({})").format(
        sql.SQL(", ").join(sql.Identifier(k) for k in row),
        sql.SQL(", ").join(sql.Placeholder() for _ in row),
    )
    await conn.execute(query, list(row.values()))


@pytest_asyncio.fixture
async def raw(turnstore_pg_dsn: str) -> AsyncIterator[Conn]:
    async with await psycopg.AsyncConnection.connect(turnstore_pg_dsn, autocommit=True) as conn:
        yield conn


_CHECK_CASES: list[tuple[str, dict[str, Any]]] = [
    ("chat_turns_requester_type_check", {"requester_type": "bot"}),
    ("chat_turns_requester_user_check", {"requester_user_id": None}),
    ("chat_turns_state_check", {"state": "paused", "completed_at": "2026-01-01T00:00:01Z"}),
    ("chat_turns_terminal_completed_at_check", {"state": "failed", "error_code": "x"}),
    ("chat_turns_running_completed_at_check", {"completed_at": "2026-01-01T00:00:01Z"}),
    ("chat_turns_running_progress_check", {"last_progress_at": None}),
    ("chat_turns_completed_error_check", {**_TERMINAL, "error_code": "boom"}),
    ("chat_turns_reserve_covers_output_check", {**_PREFLIGHT, "reserve_tokens": 49}),
    ("chat_turns_preflight_all_or_none_check", {"reserve_tokens": 100}),
    *[
        ("chat_turns_nonnegative_check", {**_PREFLIGHT, column: -1})
        for column in (
            "reserved_credits_micro",
            "policy_version_applied",
            "minimal_generation_floor_applied",
        )
    ],
    # reserve_tokens / max_output_tokens_applied: negative while still reserve >= output.
    (
        "chat_turns_nonnegative_check",
        {**_PREFLIGHT, "reserve_tokens": -1, "max_output_tokens_applied": -2},
    ),
    ("chat_turns_nonnegative_check", {**_PREFLIGHT, "max_output_tokens_applied": -1}),
    *[
        ("chat_turns_nonnegative_check", {column: -1})
        for column in (
            "web_search_completed_count",
            "code_interpreter_completed_count",
            "file_search_completed_count",
        )
    ],
]


@pytest.mark.parametrize(
    ("constraint", "overrides"),
    _CHECK_CASES,
    ids=[f"{name}-{'-'.join(o)}" for name, o in _CHECK_CASES],
)
async def test_check_constraint_refuses(
    raw: Conn, constraint: str, overrides: dict[str, Any]
) -> None:
    await _insert(raw, _row())  # the base row itself is valid
    with pytest.raises(psycopg.errors.CheckViolation) as info:
        await _insert(raw, _row(**overrides))
    assert info.value.diag.constraint_name == constraint


async def test_check_constraints_also_hold_on_update(raw: Conn) -> None:
    row = _row()
    await _insert(raw, row)
    with pytest.raises(psycopg.errors.CheckViolation) as info:
        await raw.execute(
            "UPDATE turnstore.chat_turns SET state = 'completed' WHERE id = %s", (row["id"],)
        )
    assert info.value.diag.constraint_name == "chat_turns_terminal_completed_at_check"


async def test_valid_terminal_and_preflight_rows_are_accepted(raw: Conn) -> None:
    await _insert(raw, _row(**_TERMINAL, **_PREFLIGHT))
    await _insert(raw, _row(state="failed", error_code="x", completed_at="2026-01-01T00:00:01Z"))
    await _insert(raw, _row(requester_type="system", requester_user_id=None))
    cur = await raw.execute("SELECT count(*) FROM turnstore.chat_turns")
    assert await cur.fetchone() == (3,)


async def test_primary_key_refuses_a_second_id(raw: Conn) -> None:
    row = _row()
    await _insert(raw, row)
    with pytest.raises(psycopg.errors.UniqueViolation) as info:
        await _insert(raw, _row(id=row["id"]))
    assert info.value.diag.constraint_name == "chat_turns_pkey"


async def test_request_key_is_unique_per_tenant_chat_deleted_turns_included(raw: Conn) -> None:
    row = _row(**_TERMINAL, deleted_at="2026-01-01T00:00:02Z")
    await _insert(raw, row)
    await _insert(raw, _row(request_id=row["request_id"]))  # another chat: fine
    # Another tenant's chat with the same id: fine.
    await _insert(raw, _row(chat_id=row["chat_id"], request_id=row["request_id"]))
    with pytest.raises(psycopg.errors.UniqueViolation) as info:
        await _insert(
            raw,
            _row(tenant_id=row["tenant_id"], chat_id=row["chat_id"], request_id=row["request_id"]),
        )
    assert info.value.diag.constraint_name == "chat_turns_tenant_chat_request_key"


async def test_one_running_turn_per_tenant_chat(raw: Conn) -> None:
    tenant, chat = uuid.uuid4(), uuid.uuid4()
    await _insert(raw, _row(tenant_id=tenant, chat_id=chat))
    await _insert(raw, _row(chat_id=chat))  # another tenant's chat with the same id: fine
    with pytest.raises(psycopg.errors.UniqueViolation) as info:
        await _insert(raw, _row(tenant_id=tenant, chat_id=chat))
    assert info.value.diag.constraint_name == "chat_turns_one_running_per_tenant_chat"


async def test_the_driver_error_boundary_reads_the_tenant_keys(raw: Conn) -> None:
    """``turnstore.postgres.errors`` maps a unique violation of each key, read off its
    constraint name and the (tenant_id, chat_id, ...) key in the detail, to its typed
    error naming the chat."""
    row = _row()
    await _insert(raw, row)
    same_key = _row(
        tenant_id=row["tenant_id"], chat_id=row["chat_id"], request_id=row["request_id"]
    )
    with pytest.raises(DuplicateRequestError) as duplicate, driver_errors:
        await _insert(raw, {**same_key, **_TERMINAL})
    assert (duplicate.value.chat_id, duplicate.value.request_id) == (
        row["chat_id"],
        row["request_id"],
    )
    with pytest.raises(GenerationInProgressError) as running, driver_errors:
        await _insert(raw, _row(tenant_id=row["tenant_id"], chat_id=row["chat_id"]))
    assert running.value.chat_id == row["chat_id"]


async def test_running_index_ignores_deleted_and_terminal_turns(raw: Conn) -> None:
    tenant, chat = uuid.uuid4(), uuid.uuid4()
    await _insert(raw, _row(tenant_id=tenant, chat_id=chat, deleted_at="2026-01-01T00:00:02Z"))
    await _insert(raw, _row(tenant_id=tenant, chat_id=chat, **_TERMINAL))
    await _insert(raw, _row(tenant_id=tenant, chat_id=chat))  # the one live running turn
    cur = await raw.execute("SELECT count(*) FROM turnstore.chat_turns WHERE chat_id = %s", (chat,))
    assert await cur.fetchone() == (3,)


# --- migrations --------------------------------------------------------------------------


@pytest.fixture
def empty_dsn(turnstore_admin_dsn: str) -> Iterator[str]:
    with temporary_database(turnstore_admin_dsn, prefix="turnstore_mig") as dsn:
        yield dsn


@pytest_asyncio.fixture
async def empty_conn(empty_dsn: str) -> AsyncIterator[Conn]:
    async with await psycopg.AsyncConnection.connect(empty_dsn, autocommit=True) as conn:
        yield conn


async def _relation_exists(conn: Conn, schema: str, name: str) -> bool:
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(
        "SELECT to_regclass(quote_ident(%s) || '.' || quote_ident(%s))", (schema, name)
    )
    row = await cur.fetchone()
    return row is not None and row[0] is not None


def test_migration_files_are_the_numbered_sql_files() -> None:
    files = migration_files()
    assert [m.version for m in files] == sorted({m.version for m in files})
    repo_sql = Path(__file__).resolve().parents[2] / "src" / "turnstore" / "sql"
    for m in files:
        text = (repo_sql / f"{m.version:04d}_{m.name}.sql").read_text(encoding="utf-8")
        assert m.sql == text
        assert len(m.checksum) == 64


async def test_migrate_applies_once_and_rerun_is_a_noop(empty_conn: Conn) -> None:
    before = await check_schema(empty_conn)
    assert not before.current
    assert before.applied == ()
    assert before.pending == tuple(m.version for m in migration_files())

    assert await migrate(empty_conn) == [m.version for m in migration_files()]
    assert await migrate(empty_conn) == []

    after = await check_schema(empty_conn)
    assert after.current
    assert after.pending == ()
    assert after.applied == tuple(m.version for m in migration_files())
    assert await _relation_exists(empty_conn, "turnstore", "chat_turns")
    assert not await _relation_exists(empty_conn, "public", "chat_turns")


async def _wait_until_waiting_on_lock(watcher: Conn, pids: list[int]) -> None:
    """Poll ``pg_stat_activity`` until every backend in ``pids`` waits on a lock."""
    for _ in range(2000):
        cur = await watcher.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE pid = ANY(%s) AND wait_event_type = 'Lock'",
            (pids,),
        )
        row = await cur.fetchone()
        if row is not None and row[0] == len(pids):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"backends {pids} never waited on a lock")


async def test_concurrent_migrations_apply_once(empty_dsn: str, empty_conn: Conn) -> None:
    connect = psycopg.AsyncConnection.connect
    async with (
        await connect(empty_dsn, autocommit=True) as a,
        await connect(empty_dsn, autocommit=True) as b,
    ):
        # Hold the migration lock so both runners are provably waiting at the same time.
        await empty_conn.execute(
            "SELECT pg_advisory_lock(%s, hashtext(%s))", (MIGRATION_LOCK_CLASS, "turnstore")
        )
        runs = [asyncio.create_task(migrate(a)), asyncio.create_task(migrate(b))]
        await _wait_until_waiting_on_lock(empty_conn, [a.info.backend_pid, b.info.backend_pid])
        await empty_conn.execute(
            "SELECT pg_advisory_unlock(%s, hashtext(%s))", (MIGRATION_LOCK_CLASS, "turnstore")
        )
        results = await asyncio.wait_for(asyncio.gather(*runs), timeout=60)
    # Each migration's transaction takes the lock, so the two runners may take turns file
    # by file: every version is applied exactly once, in order, by one runner or the other.
    applied = results[0] + results[1]
    assert sorted(applied) == [m.version for m in migration_files()]
    assert all(run == sorted(run) for run in results)
    cur = await empty_conn.execute("SELECT count(*) FROM turnstore.schema_migrations")
    assert await cur.fetchone() == (len(migration_files()),)


def _with_extra(sql_text: str) -> list[Migration]:
    """The real migrations plus one more, as a newer turnstore would ship."""
    files = migration_files()
    return [*files, Migration(files[-1].version + 1, "extra", sql_text)]


async def test_pending_migration_is_reported_and_applied_in_the_schema(
    empty_conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrate(empty_conn)
    monkeypatch.setattr(pgm, "migration_files", lambda: _with_extra("CREATE TABLE extra (x int);"))
    extra = pgm.migration_files()[-1].version
    status = await check_schema(empty_conn)
    assert (status.current, status.pending) == (False, (extra,))
    assert await migrate(empty_conn) == [extra]
    assert await _relation_exists(empty_conn, "turnstore", "extra")
    assert (await check_schema(empty_conn)).current


async def test_changed_migration_is_refused_and_nothing_applied(
    empty_conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrate(empty_conn)
    await empty_conn.execute(
        "UPDATE turnstore.schema_migrations SET checksum = 'edited' WHERE version = 1"
    )
    monkeypatch.setattr(pgm, "migration_files", lambda: _with_extra("CREATE TABLE extra (x int);"))
    status = await check_schema(empty_conn)
    assert status.changed == (1,)
    assert not status.current
    with pytest.raises(MigrationError, match="checksum"):
        await migrate(empty_conn)
    assert not await _relation_exists(empty_conn, "turnstore", "extra")


async def test_recorded_version_without_file_is_refused(empty_conn: Conn) -> None:
    await migrate(empty_conn)
    await empty_conn.execute(
        "INSERT INTO turnstore.schema_migrations (version, name, checksum)"
        " VALUES (9999, 'from_the_future', 'x')"
    )
    status = await check_schema(empty_conn)
    assert (status.unknown, status.current) == ((9999,), False)
    with pytest.raises(MigrationError, match="9999"):
        await migrate(empty_conn)


async def test_failing_migration_records_nothing_and_releases_the_lock(
    empty_conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrate(empty_conn)
    monkeypatch.setattr(
        pgm, "migration_files", lambda: _with_extra("CREATE TABLE half (x int); SELECT 1/0;")
    )
    with pytest.raises(MigrationError, match="extra") as info:
        await migrate(empty_conn)
    assert isinstance(info.value.__cause__, psycopg.errors.DivisionByZero)
    assert not await _relation_exists(empty_conn, "turnstore", "half")
    assert (await check_schema(empty_conn)).pending == (pgm.migration_files()[-1].version,)
    cur = await empty_conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (MIGRATION_LOCK_CLASS,),
    )
    assert await cur.fetchone() == (0,)


async def test_migrate_refuses_a_connection_inside_a_transaction(empty_conn: Conn) -> None:
    async with empty_conn.transaction():
        with pytest.raises(MigrationError, match="outside any transaction"):
            await migrate(empty_conn)
        await empty_conn.execute("SELECT 1")  # the caller's transaction is untouched
    assert not await _relation_exists(empty_conn, "turnstore", "chat_turns")


async def test_migrate_on_a_non_autocommit_connection_restores_it(empty_dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(empty_dsn) as conn:
        assert await migrate(conn) == [m.version for m in migration_files()]
        assert conn.autocommit is False
        assert (await check_schema(conn)).current


async def test_check_schema_needs_no_ddl_rights(empty_conn: Conn) -> None:
    role = f"turnstore_reader_{uuid.uuid4().hex[:10]}"
    await empty_conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    try:
        await empty_conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        assert (await check_schema(empty_conn)).applied == ()  # no schema yet
        await empty_conn.execute("RESET ROLE")
        await migrate(empty_conn)
        await empty_conn.execute(
            sql.SQL(
                "GRANT USAGE ON SCHEMA turnstore TO {0};"
                " GRANT SELECT ON turnstore.schema_migrations TO {0}"
            ).format(sql.Identifier(role))
        )
        await empty_conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        assert (await check_schema(empty_conn)).current
    finally:
        await empty_conn.execute("RESET ROLE")
        await empty_conn.execute(
            sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(sql.Identifier(role))
        )


# --- verify_schema -------------------------------------------------------------------------


@pytest.fixture
def opened_pools(monkeypatch: pytest.MonkeyPatch) -> list[psycopg_pool.AsyncConnectionPool[Any]]:
    """Every pool ``PostgresStore.open`` creates while the test runs (a recording subclass
    of the real pool), so a test can see whether a failed ``open`` closed its pool."""
    pools: list[psycopg_pool.AsyncConnectionPool[Any]] = []

    class RecordingPool(psycopg_pool.AsyncConnectionPool[Any]):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            pools.append(self)

    monkeypatch.setattr(psycopg_pool, "AsyncConnectionPool", RecordingPool)
    return pools


async def test_open_verify_schema_refuses_an_empty_database_and_closes_its_pool(
    empty_dsn: str, empty_conn: Conn, opened_pools: list[psycopg_pool.AsyncConnectionPool[Any]]
) -> None:
    versions = tuple(m.version for m in migration_files())
    with pytest.raises(SchemaMismatchError) as info:
        await PostgresStore.open(empty_dsn, verify_schema=True)
    error = info.value
    assert (error.code, error.schema) == ("schema_mismatch", "turnstore")
    assert (error.pending, error.changed, error.unknown) == (versions, (), ())
    pending = ", ".join(f"{v:04d}" for v in versions)
    assert str(error) == f"schema 'turnstore' is not current (pending: {pending})"
    assert len(opened_pools) == 1
    assert opened_pools[0].closed
    assert not await _relation_exists(empty_conn, "turnstore", "schema_migrations")


_MISMATCHES = {
    "pending": "DELETE FROM {table} WHERE version = 1",
    "changed": "UPDATE {table} SET checksum = 'edited' WHERE version = 1",
    "unknown": "INSERT INTO {table} (version, name, checksum) VALUES (9999, 'future', 'x')",
}


@pytest.mark.parametrize("kind", sorted(_MISMATCHES))
async def test_verify_schema_names_what_differs(
    empty_dsn: str,
    empty_conn: Conn,
    kind: str,
    opened_pools: list[psycopg_pool.AsyncConnectionPool[Any]],
) -> None:
    await migrate(empty_conn, schema=ODD_SCHEMA)
    async with await PostgresStore.open(empty_dsn, schema=ODD_SCHEMA, verify_schema=True) as store:
        assert (await store.verify_schema()).applied == tuple(m.version for m in migration_files())
        table = sql.Identifier(ODD_SCHEMA, "schema_migrations")
        await empty_conn.execute(sql.SQL(_MISMATCHES[kind]).format(table=table))
        with pytest.raises(SchemaMismatchError) as on_demand:
            await store.verify_schema()
        found: dict[str, tuple[int, ...]] = {"pending": (), "changed": (), "unknown": ()}
        found[kind] = (9999,) if kind == "unknown" else (1,)
        error = on_demand.value
        assert (error.pending, error.changed, error.unknown) == tuple(found.values())
        assert kind in str(error)
        assert not store.pool.closed  # on demand, the store stays usable
    with pytest.raises(SchemaMismatchError) as at_open:
        await PostgresStore.open(empty_dsn, schema=ODD_SCHEMA, verify_schema=True)
    assert str(at_open.value) == str(error)
    assert opened_pools[-1].closed


async def test_verify_schema_on_a_host_pool_store(turnstore_pg_dsn: str) -> None:
    async with psycopg_pool.AsyncConnectionPool(turnstore_pg_dsn, min_size=1, open=False) as pool:
        store = PostgresStore(pool)
        assert (await store.verify_schema()).current
        other = PostgresStore(pool, schema="not_migrated")
        with pytest.raises(SchemaMismatchError, match="'not_migrated' is not current"):
            await other.verify_schema()


# Names that need quoting, and names with ``%``, which psycopg would read as a placeholder
# in a statement executed with parameters if it were not escaped there.
ODD_SCHEMAS = [ODD_SCHEMA, "50%off", "a%sb", "%%(x)s%"]


@pytest.mark.parametrize("schema", ODD_SCHEMAS)
async def test_schema_sql_builds_a_current_schema(empty_conn: Conn, schema: str) -> None:
    script = schema_sql(schema)
    assert script.startswith("-- turnstore schema")
    ident = sql.Identifier(schema).as_string(None)
    assert f"CREATE SCHEMA IF NOT EXISTS {ident};" in script
    await empty_conn.execute(script.encode("utf-8"))
    await empty_conn.execute("RESET search_path")
    assert (await check_schema(empty_conn, schema=schema)).current
    assert await _relation_exists(empty_conn, schema, "chat_turns")
    assert await migrate(empty_conn, schema=schema) == []


@pytest.mark.parametrize("schema", ODD_SCHEMAS)
async def test_odd_schema_name_works_end_to_end(empty_dsn: str, schema: str) -> None:
    async with await PostgresStore.open(empty_dsn, schema=schema) as store:
        assert not (await store.check_schema()).current
        await store.migrate()
        assert (await store.check_schema()).current
        turns = store.turns
        params = make_params()
        scope = AccessScope.for_tenant(params.tenant_id)
        async with store.transaction() as conn:
            created = await turns.create_turn(conn, scope, params)
            with pytest.raises(DuplicateTurnIdError):
                await turns.create_turn(conn, scope, params)
            locked = await turns.find_latest_for_update(
                conn, scope, params.tenant_id, params.chat_id
            )
            assert locked == created
            assert await turns.update_progress_at(conn, scope, params.id) == 1
        async with store.connection() as conn:
            found = await turns.find_by_chat_and_request_id(
                conn, scope, params.tenant_id, params.chat_id, params.request_id
            )
            assert found is not None
            assert found.id == created.id
            assert await turns.update_preflight_fields(conn, scope, preflight_params(created)) == 1
            await turns.increment_tool_calls(conn, scope, params.id, ToolCallType.WEB_SEARCH)
            assert await turns.find_orphan_candidates(conn, 0, 10) != []
            assert await turns.cas_finalize_orphan(conn, params.id, 0) == 1
            assert (
                await turns.find_running_by_chat_id(conn, scope, params.tenant_id, params.chat_id)
                is None
            )
            latest = await turns.find_latest_turn(conn, scope, params.tenant_id, params.chat_id)
            assert latest is not None
            assert (latest.state, latest.web_search_completed_count) == (TurnState.FAILED, 1)

            # A second turn of the chat completed by CAS, a third one failed by CAS.
            same_chat = {"tenant_id": params.tenant_id, "chat_id": params.chat_id}
            second = await turns.create_turn(conn, scope, make_params(**same_chat))
            done = complete_params(second)
            await turns.set_assistant_message_id(conn, scope, second.id, done.assistant_message_id)
            assert await turns.cas_update_completed(conn, scope, done) == 1
            assert await turns.cas_update_completed(conn, scope, done) == 0
            third = await turns.create_turn(conn, scope, make_params(**same_chat))
            failed = terminal_params(third, TurnState.FAILED)
            assert await turns.cas_update_state(conn, scope, failed) == 1
            await turns.soft_delete(conn, scope, third.id, None)
            latest = await turns.find_latest_turn(conn, scope, params.tenant_id, params.chat_id)
            assert latest is not None
            assert latest.id == second.id
            cur = await conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "chat_turns"))
            )
            assert await cur.fetchone() == (3,)
