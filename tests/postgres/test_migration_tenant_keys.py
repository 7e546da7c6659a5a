"""Migration 0003 (``sql/0003_tenant_keys.sql``): it runs on a table holding whatever 0001
allowed, two tenants sharing a chat id included; it adopts an index built beforehand with
``CREATE INDEX CONCURRENTLY`` and refuses one that is invalid or of another definition
(docs/schema.md, *Migrating a populated table*)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
import pytest_asyncio

import turnstore.postgres.migrations as pgm
from turnstore import AccessScope, MigrationError
from turnstore.embedded import temporary_database
from turnstore.postgres import PostgresStore, check_schema, migrate
from turnstore.testing.conformance import make_params

Conn = psycopg.AsyncConnection[Any]

_NEW_INDEXES = {
    "chat_turns_tenant_chat_request_key",
    "chat_turns_one_running_per_tenant_chat",
    "chat_turns_tenant_chat_latest",
}
_OLD_INDEXES = {
    "chat_turns_chat_request_key",
    "chat_turns_one_running_per_chat",
    "chat_turns_chat_latest",
}


@pytest.fixture
def empty_dsn(turnstore_admin_dsn: str) -> Iterator[str]:
    with temporary_database(turnstore_admin_dsn, prefix="turnstore_mig3") as dsn:
        yield dsn


@pytest_asyncio.fixture
async def conn(empty_dsn: str) -> AsyncIterator[Conn]:
    async with await psycopg.AsyncConnection.connect(empty_dsn, autocommit=True) as conn:
        yield conn


async def _migrate_before_0003(conn: Conn, monkeypatch: pytest.MonkeyPatch) -> None:
    files = pgm.migration_files()
    with monkeypatch.context() as patch:
        patch.setattr(
            pgm, "migration_files", lambda partitions=0: [m for m in files if m.version < 3]
        )
        await migrate(conn)
    assert (await check_schema(conn)).pending[0] == 3


async def _insert(conn: Conn, **row: Any) -> None:
    row.setdefault("id", uuid.uuid4())
    row.setdefault("request_id", uuid.uuid4())
    row.setdefault("requester_type", "system")
    row.setdefault("updated_at", row["started_at"])
    if row["state"] == "running":
        row.setdefault("last_progress_at", row["started_at"])
    else:
        row.setdefault("completed_at", row["started_at"])
    columns = ", ".join(row)
    values = ", ".join(["%s"] * len(row))
    await conn.execute(
        f"INSERT INTO turnstore.chat_turns ({columns}) VALUES ({values})",
        tuple(row.values()),
    )


async def _indexes(conn: Conn) -> dict[str, int]:
    cur = await conn.execute(
        "SELECT c.relname, c.oid::int FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = 'turnstore.chat_turns'::regclass"
    )
    return {str(name): int(oid) for name, oid in await cur.fetchall()}


async def test_0003_runs_on_the_rows_0001_allowed(
    conn: Conn, empty_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _migrate_before_0003(conn, monkeypatch)
    a, b, chat = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    shared_request = uuid.uuid4()
    # Tenant A runs a turn in the chat; tenant B has finished and deleted turns in a chat
    # with the same id, and a deleted turn that is still running.
    await _insert(
        conn,
        tenant_id=a,
        chat_id=chat,
        request_id=shared_request,
        state="running",
        started_at="2026-01-01T00:00:03Z",
    )
    await _insert(
        conn, tenant_id=b, chat_id=chat, state="completed", started_at="2026-01-01T00:00:01Z"
    )
    await _insert(
        conn,
        tenant_id=b,
        chat_id=chat,
        state="running",
        started_at="2026-01-01T00:00:02Z",
        deleted_at="2026-01-01T00:00:02Z",
    )
    await _insert(
        conn,
        tenant_id=a,
        chat_id=uuid.uuid4(),
        state="failed",
        started_at="2026-01-01T00:00:00Z",
        error_code="x",
    )

    assert 3 in await migrate(conn)
    assert (await check_schema(conn)).current
    indexes = await _indexes(conn)
    assert set(indexes) >= _NEW_INDEXES
    assert not _OLD_INDEXES & set(indexes)
    cur = await conn.execute("SELECT count(*) FROM turnstore.chat_turns")
    assert await cur.fetchone() == (4,)

    # The new keys: B may now run a turn in its chat, with A's request id.
    params = make_params(tenant_id=b, chat_id=chat, request_id=shared_request)
    store = await PostgresStore.open(empty_dsn, verify_schema=True)
    async with store, store.connection() as runner:
        turn = await store.turns.create_turn(runner, AccessScope.for_tenant(b), params)
        latest = await store.turns.find_latest_turn(runner, AccessScope.allow_all(), b, chat)
    assert latest == turn


async def test_a_prebuilt_index_is_adopted(conn: Conn, monkeypatch: pytest.MonkeyPatch) -> None:
    await _migrate_before_0003(conn, monkeypatch)
    await conn.execute(
        "CREATE UNIQUE INDEX CONCURRENTLY chat_turns_one_running_per_tenant_chat"
        " ON turnstore.chat_turns (tenant_id, chat_id)"
        " WHERE state = 'running' AND deleted_at IS NULL"
    )
    await conn.execute(
        "CREATE UNIQUE INDEX CONCURRENTLY chat_turns_tenant_chat_request_key"
        " ON turnstore.chat_turns (tenant_id, chat_id, request_id)"
    )
    before = await _indexes(conn)
    assert 3 in await migrate(conn)
    after = await _indexes(conn)
    for name in ("chat_turns_one_running_per_tenant_chat", "chat_turns_tenant_chat_request_key"):
        assert after[name] == before[name], f"{name} was rebuilt, not adopted"
    assert set(after) >= _NEW_INDEXES
    assert not _OLD_INDEXES & set(after)


@pytest.mark.parametrize("problem", ["other-definition", "invalid"])
async def test_a_prebuilt_index_that_is_not_the_one_stops_the_migration(
    conn: Conn, monkeypatch: pytest.MonkeyPatch, problem: str
) -> None:
    await _migrate_before_0003(conn, monkeypatch)
    if problem == "other-definition":
        await conn.execute(
            "CREATE INDEX chat_turns_tenant_chat_latest ON turnstore.chat_turns (tenant_id)"
        )
        expected = "exists with another definition"
    else:
        # A failed concurrent build leaves an invalid index behind.
        await conn.execute(
            "CREATE INDEX chat_turns_tenant_chat_latest ON turnstore.chat_turns"
            " (tenant_id, chat_id, started_at DESC, id DESC) WHERE deleted_at IS NULL"
        )
        await conn.execute(
            "UPDATE pg_index SET indisvalid = false"
            " WHERE indexrelid = 'turnstore.chat_turns_tenant_chat_latest'::regclass"
        )
        expected = "is not valid"
    before = await _indexes(conn)
    with pytest.raises(MigrationError, match=expected):
        await migrate(conn)
    assert await _indexes(conn) == before  # nothing changed
    assert (await check_schema(conn)).pending[0] == 3
