"""``turnstore purge`` and ``turnstore erase-tenant`` against a real server: what they
delete, their progress lines and dry runs, and their usage errors (exit 2)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from cli_support import run_cli
from turnstore.model import CasTerminalParams, CreateTurnParams, RequesterType, Turn, TurnState
from turnstore.postgres import PostgresStore
from turnstore.scope import AccessScope
from turnstore.testing.backends import PostgresHarness

ALLOW = AccessScope.allow_all()


@pytest.fixture
async def pg_store(turnstore_pg_dsn: str) -> AsyncIterator[PostgresStore]:
    async with await PostgresStore.open(turnstore_pg_dsn) as store:
        yield store


async def create(store: PostgresStore, tenant_id: uuid.UUID, *, finish: bool) -> Turn:
    params = CreateTurnParams(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        chat_id=uuid.uuid4(),
        request_id=uuid.uuid4(),
        requester_type=RequesterType.SYSTEM,
    )
    async with store.connection() as conn:
        turn = await store.turns.create_turn(conn, ALLOW, params)
        if finish:
            cas = CasTerminalParams(turn_id=turn.id, state=TurnState.CANCELLED)
            assert await store.turns.cas_update_state(conn, ALLOW, cas) == 1
    return turn


async def exists(store: PostgresStore, turn: Turn) -> bool:
    async with store.connection() as conn:
        return await store.turns.get_turn(conn, ALLOW, turn.id) is not None


async def test_purge_deletes_old_finished_turns_in_batches_with_progress(
    pg_store: PostgresStore, turnstore_pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tenant = uuid.uuid4()
    old = [await create(pg_store, tenant, finish=True) for _ in range(3)]
    old_running = await create(pg_store, tenant, finish=False)
    await PostgresHarness(pg_store).advance_time(2 * 86400)
    recent = await create(pg_store, tenant, finish=True)

    args = ("purge", "--older-than", "1d", "--dsn", turnstore_pg_dsn, "--batch-size", "2")
    assert await run_cli(*args, "--dry-run") == 0
    assert capsys.readouterr().out == (
        "dry run in schema 'turnstore': 3 terminal turns that ended more than 1d ago would be"
        " deleted\n"
    )
    assert all([await exists(pg_store, t) for t in old])

    assert await run_cli(*args) == 0
    assert capsys.readouterr().out == (
        "deleted 2 so far\ndeleted 3 so far\n"
        "deleted 3 terminal turns that ended more than 1d ago from schema 'turnstore' in 2"
        " batch(es)\n"
    )
    assert not any([await exists(pg_store, t) for t in old])
    assert await exists(pg_store, old_running)
    assert await exists(pg_store, recent)


async def test_erase_tenant_deletes_running_turns_too(
    pg_store: PostgresStore, turnstore_pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tenant = uuid.uuid4()
    turns = [
        await create(pg_store, tenant, finish=False),
        await create(pg_store, tenant, finish=True),
    ]
    other = await create(pg_store, uuid.uuid4(), finish=False)
    assert await run_cli("erase-tenant", str(tenant), "--dsn", turnstore_pg_dsn, "--dry-run") == 0
    assert f"2 turns of tenant {tenant} would be deleted" in capsys.readouterr().out
    assert await run_cli("erase-tenant", str(tenant), "--dsn", turnstore_pg_dsn) == 0
    assert f"deleted 2 turns of tenant {tenant} from schema 'turnstore'" in (
        capsys.readouterr().out
    )
    assert not any([await exists(pg_store, t) for t in turns])
    assert await exists(pg_store, other)


@pytest.mark.parametrize(
    "args",
    [
        ["purge", "--older-than", "30x"],
        ["purge", "--older-than", "-1d"],
        ["purge"],
        ["purge", "--older-than", "30d", "--batch-size", "0"],
        ["erase-tenant", "not-a-uuid"],
        ["erase-tenant"],
        ["purge", "--older-than", "30d"],  # no DSN anywhere
    ],
)
async def test_usage_errors_exit_2(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TURNSTORE_DSN", raising=False)
    assert await run_cli(*args) == 2
    assert "turnstore" in capsys.readouterr().err
