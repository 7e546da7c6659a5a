"""The partitioned layout (docs/schema.md, *The partitioned layout*): ``chat_turns`` and
``chat_heads`` hash-partitioned by ``tenant_id``, every unique key containing it, the
layout recorded and never changed, scoped statements pruned to one partition, the chat lock
a row lock that serializes, unique violations of the partitions' indexes translated like
the parent's. These tests migrate databases of their own, whatever
``TURNSTORE_TEST_PARTITIONS`` says.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from psycopg import sql
from psycopg.rows import tuple_row

from turnstore import (
    AccessScope,
    DuplicateRequestError,
    DuplicateTurnIdError,
    GenerationInProgressError,
    InvalidParameterError,
    MigrationError,
)
from turnstore.embedded import temporary_database
from turnstore.errors import SchemaLayoutError
from turnstore.postgres import (
    PostgresStore,
    PostgresTurnRepository,
    check_schema,
    migrate,
    migration_files,
    schema_sql,
)
from turnstore.postgres import statements as q
from turnstore.postgres.errors import driver_errors
from turnstore.postgres.scope import compile_scope
from turnstore.testing.conformance import make_params
from turnstore.testing.plugin import partitions_under_test

Conn = psycopg.AsyncConnection[Any]
PARTITIONS = 16
ALLOW = AccessScope.allow_all()


@pytest.fixture
def empty_dsn(turnstore_admin_dsn: str) -> Iterator[str]:
    with temporary_database(turnstore_admin_dsn, prefix="turnstore_part") as dsn:
        yield dsn


@pytest_asyncio.fixture
async def empty_conn(empty_dsn: str) -> AsyncIterator[Conn]:
    async with await psycopg.AsyncConnection.connect(empty_dsn, autocommit=True) as conn:
        yield conn


@pytest_asyncio.fixture
async def part_conn(empty_conn: Conn) -> Conn:
    """An autocommit connection to a database migrated with 16 partitions."""
    await migrate(empty_conn, partitions=PARTITIONS)
    return empty_conn


@pytest_asyncio.fixture
async def part_store(empty_dsn: str, part_conn: Conn) -> AsyncIterator[PostgresStore]:
    store = await PostgresStore.open(empty_dsn, min_size=1, max_size=4)
    try:
        yield store
    finally:
        await store.close()


async def _rows(conn: Conn, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(query, params)
    return await cur.fetchall()


# --- the tables ---------------------------------------------------------------------------


@pytest.mark.parametrize("table", ["chat_turns", "chat_heads"])
async def test_the_tables_are_hash_partitioned_by_tenant(part_conn: Conn, table: str) -> None:
    rows = await _rows(
        part_conn,
        "SELECT p.partstrat, a.attname FROM pg_partitioned_table p"
        " JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]"
        " WHERE p.partrelid = to_regclass('turnstore.' || %s)",
        (table,),
    )
    assert rows == [("h", "tenant_id")]
    children = await _rows(
        part_conn,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = to_regclass('turnstore.' || %s) ORDER BY c.relname",
        (table,),
    )
    assert sorted(name for (name,) in children) == sorted(
        f"{table}_p{r}" for r in range(PARTITIONS)
    )


async def test_every_unique_index_contains_tenant_id(part_conn: Conn) -> None:
    """Parents and partitions alike: the first rule of a distributed PostgreSQL too."""
    rows = await _rows(
        part_conn,
        "SELECT c.relname, t.relname,"
        "       (SELECT attnum FROM pg_attribute"
        "         WHERE attrelid = t.oid AND attname = 'tenant_id') = ANY (ix.indkey)"
        "  FROM pg_index ix"
        "  JOIN pg_class c ON c.oid = ix.indexrelid"
        "  JOIN pg_class t ON t.oid = ix.indrelid"
        "  JOIN pg_namespace n ON n.oid = t.relnamespace"
        " WHERE n.nspname = 'turnstore' AND ix.indisunique"
        "   AND (t.relname LIKE 'chat\\_turns%%' OR t.relname LIKE 'chat\\_heads%%')",
    )
    # Per table: the primary key, the request key and one-running (chat_turns), the
    # primary key (chat_heads); on 16 partitions and each parent.
    assert len(rows) == (3 + 1) * (PARTITIONS + 1)
    assert [(index, table) for index, table, has_tenant in rows if not has_tenant] == []


async def test_partition_indexes_are_named_after_the_parents(part_conn: Conn) -> None:
    rows = await _rows(
        part_conn,
        "SELECT c.relname FROM pg_index ix JOIN pg_class c ON c.oid = ix.indexrelid"
        " WHERE ix.indrelid = to_regclass('turnstore.chat_turns_p7') AND ix.indisunique"
        " ORDER BY 1",
    )
    assert [name for (name,) in rows] == [
        "chat_turns_one_running_per_tenant_chat_p7",
        "chat_turns_pkey_p7",
        "chat_turns_tenant_chat_request_key_p7",
    ]


# --- the layout is recorded, reported and never changed -----------------------------------


async def test_check_schema_reports_the_layout(part_conn: Conn) -> None:
    status = await check_schema(part_conn)
    assert status.current
    assert status.partitions == PARTITIONS
    assert status.layout == "hash-partitioned (16 partitions)"
    assert await _rows(part_conn, "SELECT name, value FROM turnstore.schema_settings") == [
        ("partitions", "16")
    ]
    # The checksums recorded are those of the partitioned files.
    recorded = dict(
        await _rows(part_conn, "SELECT version, checksum FROM turnstore.schema_migrations")
    )
    assert recorded == {m.version: m.checksum for m in migration_files(PARTITIONS)}
    assert recorded[1] != migration_files()[0].checksum


async def test_a_plain_schema_reports_the_plain_layout(empty_conn: Conn) -> None:
    await migrate(empty_conn)
    status = await check_schema(empty_conn)
    assert (status.current, status.partitions, status.layout) == (True, 0, "plain")
    assert await _rows(empty_conn, "SELECT to_regclass('turnstore.chat_turns_p0')") == [(None,)]


async def _snapshot(conn: Conn) -> list[tuple[Any, ...]]:
    return await _rows(
        conn,
        "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n"
        " ON n.oid = c.relnamespace WHERE n.nspname = 'turnstore' ORDER BY 1",
    ) + await _rows(conn, "SELECT version, checksum FROM turnstore.schema_migrations ORDER BY 1")


@pytest.mark.parametrize("other", [0, 8, 32])
async def test_another_partition_count_is_refused_and_changes_nothing(
    part_conn: Conn, other: int
) -> None:
    before = await _snapshot(part_conn)
    with pytest.raises(SchemaLayoutError) as caught:
        await migrate(part_conn, partitions=other)
    assert isinstance(caught.value, MigrationError)
    assert caught.value.code == "schema_layout_mismatch"
    assert (caught.value.partitions, caught.value.requested) == (PARTITIONS, other)
    assert "16 partitions" in str(caught.value)
    assert await _snapshot(part_conn) == before
    # The recorded layout, or none, is accepted.
    assert await migrate(part_conn, partitions=PARTITIONS) == []
    assert await migrate(part_conn) == []


async def test_a_plain_schema_is_not_partitioned_later(empty_conn: Conn) -> None:
    await migrate(empty_conn)
    before = await _snapshot(empty_conn)
    with pytest.raises(SchemaLayoutError):
        await migrate(empty_conn, partitions=PARTITIONS)
    assert await _snapshot(empty_conn) == before
    assert await migrate(empty_conn, partitions=0) == []


@pytest.mark.parametrize("bad", [1, -1, 1025, True, "16", 16.0])
async def test_bad_partition_counts_are_refused(empty_conn: Conn, bad: Any) -> None:
    with pytest.raises(InvalidParameterError):
        await migrate(empty_conn, partitions=bad)
    with pytest.raises(InvalidParameterError):
        schema_sql(partitions=bad)
    assert await _rows(empty_conn, "SELECT to_regnamespace('turnstore')") == [(None,)]


async def test_schema_sql_builds_the_partitioned_layout(empty_conn: Conn) -> None:
    await empty_conn.execute(schema_sql("scripted", partitions=4).encode())
    status = await check_schema(empty_conn, "scripted")
    assert (status.current, status.partitions) == (True, 4)
    rows = await _rows(
        empty_conn,
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'scripted.chat_turns'::regclass",
    )
    assert rows == [(4,)]
    assert await migrate(empty_conn, "scripted") == []


# --- scoped statements touch one partition ------------------------------------------------


def _partitions_scanned(plan: list[tuple[Any, ...]]) -> set[str]:
    text = "\n".join(line for (line,) in plan)
    return set(re.findall(r"\bchat_turns_p\d+\b", text))


async def test_a_single_tenant_scoped_statement_touches_one_partition(part_conn: Conn) -> None:
    """Each statement as the repository runs it, with the scope compiled as it compiles
    it (``compile_scope``): a single-tenant scope prunes to the tenant's partition."""
    repo = PostgresTurnRepository()
    tenant = uuid.uuid4()
    turn = await repo.create_turn(part_conn, ALLOW, make_params(tenant_id=tenant))
    scope_sql, scope_params = compile_scope(AccessScope.for_tenant(tenant))
    explained: list[tuple[str, tuple[Any, ...]]] = [
        (q.FIND_LATEST, (tenant, turn.chat_id)),
        (q.GET_TURN, (turn.id,)),
        (q.UPDATE_PROGRESS, (turn.id,)),
        (q.SOFT_DELETE, (None, turn.id)),
        (q.LIST_TURNS_ALL, (turn.chat_id, tenant, turn.started_at, turn.id)),
    ]
    for template, head in explained:
        query = q.render_scoped(template, "turnstore").render(scope_sql)
        plan = await _rows(
            part_conn, "EXPLAIN " + query, head + scope_params + (10,) * ("LIMIT %s" in template)
        )
        assert len(_partitions_scanned(plan)) == 1, plan
    # Unscoped by tenant, a lookup by id probes every partition (the fan-out of
    # docs/scaling.md).
    unscoped = q.render_scoped(q.GET_TURN, "turnstore").render("TRUE")
    plan = await _rows(part_conn, "EXPLAIN " + unscoped, (turn.id,))
    assert len(_partitions_scanned(plan)) == PARTITIONS


async def test_a_generic_plan_prunes_at_execution(part_conn: Conn) -> None:
    """Prepared statements (psycopg prepares a statement run often) keep one plan for
    every tenant; PostgreSQL prunes it to one partition when it runs."""
    tenant = uuid.uuid4()
    query = q.render_scoped(q.FIND_LATEST, "turnstore").render("tenant_id = %s")
    async with part_conn.transaction():
        await part_conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        plan = await _rows(
            part_conn,
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + query,
            (tenant, uuid.uuid4(), tenant),
        )
    text = "\n".join(line for (line,) in plan)
    # Either pruned when planning (a custom plan) or when the executor started.
    assert len(_partitions_scanned(plan)) == 1 or f"Subplans Removed: {PARTITIONS - 1}" in text


# --- the chat lock is a row lock that serializes -------------------------------------------


async def _waiting_for_a_lock(conn: Conn, pid: int) -> bool:
    rows = await _rows(conn, "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,))
    return rows == [("Lock",)]


@pytest.mark.parametrize("scope_kind", ["tenant", "resource"])
async def test_the_chat_lock_serializes_find_latest_for_update(
    part_store: PostgresStore, part_conn: Conn, scope_kind: str
) -> None:
    """For a scope that permits the tenant (``LOCK_CHAT``) and for one that names the turn
    (``LOCK_VISIBLE_CHAT``) alike."""
    turns = part_store.turns
    params = make_params()
    scope = (
        AccessScope.for_tenant(params.tenant_id)
        if scope_kind == "tenant"
        else AccessScope.for_resource(params.id)
    )
    async with part_store.connection() as conn:
        await turns.create_turn(conn, ALLOW, params)
    async with part_store.transaction() as conn:  # the chat's head row, committed
        await turns.find_latest_for_update(conn, scope, params.tenant_id, params.chat_id)
    events: list[str] = []
    async with part_store.transaction() as first:
        await turns.find_latest_for_update(first, scope, params.tenant_id, params.chat_id)
        events.append("first locked")
        # The chat's head row is what is locked (not only the latest turn's row).
        with pytest.raises(psycopg.errors.LockNotAvailable):
            async with part_conn.transaction():
                await part_conn.execute(
                    "SELECT 1 FROM turnstore.chat_heads WHERE tenant_id = %s AND chat_id = %s"
                    " FOR UPDATE NOWAIT",
                    (params.tenant_id, params.chat_id),
                )

        async def second() -> None:
            async with part_store.transaction() as conn:
                info = conn.info.backend_pid
                pids.append(info)
                await turns.find_latest_for_update(conn, scope, params.tenant_id, params.chat_id)
                events.append("second locked")

        pids: list[int] = []
        task = asyncio.ensure_future(second())
        # The second transaction really waits: on a lock, until the first one ends.
        for _ in range(2000):
            if pids and await _waiting_for_a_lock(part_conn, pids[0]):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the second find_latest_for_update never waited on a lock")
        assert not task.done()
        events.append("first commits")
    await asyncio.wait_for(task, 60)
    assert events == ["first locked", "first commits", "second locked"]
    # The lock was a row lock on the chat's chat_heads row: no advisory lock.
    assert await _rows(part_conn, "SELECT tenant_id, chat_id FROM turnstore.chat_heads") == [
        (params.tenant_id, params.chat_id)
    ]


async def test_the_chat_lock_is_held_until_the_transaction_ends(
    part_store: PostgresStore, part_conn: Conn
) -> None:
    tenant, chat = uuid.uuid4(), uuid.uuid4()
    lock = "SELECT 1 FROM turnstore.chat_heads WHERE tenant_id = %s AND chat_id = %s"
    async with part_store.transaction() as conn:
        assert await part_store.turns.find_latest_for_update(conn, ALLOW, tenant, chat) is None
        pid = conn.info.backend_pid
        advisory = await _rows(
            part_conn,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s",
            (pid,),
        )
        assert advisory == [(0,)]
    # Committed: the row is there and free.
    async with part_conn.transaction():
        assert await _rows(part_conn, lock + " FOR UPDATE NOWAIT", (tenant, chat)) == [(1,)]
    async with part_store.transaction() as conn:
        await part_store.turns.find_latest_for_update(conn, ALLOW, tenant, chat)
        with pytest.raises(psycopg.errors.LockNotAvailable):
            async with part_conn.transaction():
                await part_conn.execute(lock + " FOR UPDATE NOWAIT", (tenant, chat))


# --- ids and unique violations ------------------------------------------------------------


async def test_a_turn_id_is_unique_across_tenants(part_store: PostgresStore) -> None:
    """The primary key is (id, tenant_id); the insert still refuses an id another tenant
    uses, as on the plain layout and the in-memory fake."""
    first = make_params()
    async with part_store.connection() as conn:
        await part_store.turns.create_turn(conn, ALLOW, first)
        with pytest.raises(DuplicateTurnIdError):
            await part_store.turns.create_turn(conn, ALLOW, make_params(turn_id=first.id))
        rows = await _rows(conn, "SELECT count(*) FROM turnstore.chat_turns")
    assert rows == [(1,)]


_COLUMNS = (
    "id, tenant_id, chat_id, request_id, requester_type, requester_user_id, state,"
    " started_at, last_progress_at, updated_at"
)


async def _raw_insert(
    conn: Conn, turn_id: uuid.UUID, tenant: uuid.UUID, chat: uuid.UUID, request: uuid.UUID
) -> None:
    await conn.execute(
        sql.SQL(
            "INSERT INTO turnstore.chat_turns (" + _COLUMNS + ") VALUES"
            " (%s, %s, %s, %s, 'user', gen_random_uuid(), 'running', now(), now(), now())"
        ),
        (turn_id, tenant, chat, request),
    )


async def test_unique_violations_of_partitions_are_typed(part_conn: Conn) -> None:
    """A write that bypasses turnstore's statements hits a partition's index; the error
    names ``<parent index>_p<n>`` and is translated like the parent's."""
    tenant, chat, turn_id, request = (uuid.uuid4() for _ in range(4))
    await _raw_insert(part_conn, turn_id, tenant, chat, request)
    cases: list[tuple[tuple[uuid.UUID, ...], type[Exception], str]] = [
        ((turn_id, tenant, uuid.uuid4(), uuid.uuid4()), DuplicateTurnIdError, "chat_turns_pkey_p"),
        (
            (uuid.uuid4(), tenant, chat, request),
            DuplicateRequestError,
            "chat_turns_tenant_chat_request_key_p",
        ),
        (
            (uuid.uuid4(), tenant, chat, uuid.uuid4()),
            GenerationInProgressError,
            "chat_turns_one_running_per_tenant_chat_p",
        ),
    ]
    for values, error, index in cases:
        with pytest.raises(error) as caught, driver_errors:
            await _raw_insert(part_conn, *values)
        cause = caught.value.__cause__
        assert isinstance(cause, psycopg.errors.UniqueViolation)
        assert (cause.diag.constraint_name or "").startswith(index)
    assert isinstance(caught.value, GenerationInProgressError)
    assert caught.value.chat_id == chat


async def test_check_schema_reads_the_layout_without_rights_on_the_settings(
    part_conn: Conn,
) -> None:
    """A role that may read only schema_migrations gets the layout from the catalog."""
    role = f"turnstore_reader_{uuid.uuid4().hex[:10]}"
    await part_conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    try:
        await part_conn.execute(
            sql.SQL(
                "GRANT USAGE ON SCHEMA turnstore TO {0};"
                " GRANT SELECT ON turnstore.schema_migrations TO {0}"
            ).format(sql.Identifier(role))
        )
        await part_conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        status = await check_schema(part_conn)
        assert (status.current, status.partitions) == (True, PARTITIONS)
    finally:
        await part_conn.execute("RESET ROLE")
        await part_conn.execute(
            sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(sql.Identifier(role))
        )


async def test_erasing_a_tenant_deletes_its_chat_heads(part_store: PostgresStore) -> None:
    """The chat lock's rows go with the tenant's turns (docs/schema.md, The table
    chat_heads); another tenant's stay."""
    tenant, other = uuid.uuid4(), uuid.uuid4()
    async with part_store.connection() as conn:
        for owner in (tenant, other):
            params = make_params(tenant_id=owner)
            await part_store.turns.create_turn(conn, ALLOW, params)
            async with conn.transaction():
                await part_store.turns.find_latest_for_update(conn, ALLOW, owner, params.chat_id)
        while await part_store.turns.erase_tenant_turns(conn, tenant, 10):
            pass
        rows = await _rows(conn, "SELECT tenant_id FROM turnstore.chat_heads")
    assert rows == [(other,)]


async def test_the_fixtures_follow_turnstore_test_partitions(turnstore_pg_dsn: str) -> None:
    """``TURNSTORE_TEST_PARTITIONS`` (read by ``partitions_under_test``) decides the layout
    of every database the plugin's fixtures make."""
    async with await psycopg.AsyncConnection.connect(turnstore_pg_dsn) as conn:
        status = await check_schema(conn)
    assert status.current
    assert status.partitions == (partitions_under_test() or 0)
