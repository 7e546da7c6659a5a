"""The ``turnstore`` command line against a real PostgreSQL: migrate (and ``--check``),
sql, demo and sweep, their exit codes, and one-line errors without tracebacks (what needs
no server is ``tests/unit/test_cli_usage.py``)."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest

from cli_support import run_cli, run_subprocess
from turnstore.cli import ENV_DSN, EXIT_STORE_ERROR
from turnstore.embedded import temporary_database
from turnstore.model import CreateTurnParams, RequesterType, Turn, TurnState
from turnstore.postgres import (
    WATCHDOG_LEASE_NAME,
    PostgresStore,
    check_schema,
    migrate,
    migration_files,
)
from turnstore.rules import ORPHAN_ERROR_CODE
from turnstore.scope import AccessScope
from turnstore.testing.backends import PostgresHarness
from turnstore.testing.plugin import partitions_under_test

#: Every migration version, as the command line lists them ("0001, 0002").
VERSIONS = ", ".join(f"{m.version:04d}" for m in migration_files())


@pytest.fixture
def empty_dsn(turnstore_admin_dsn: str) -> Iterator[str]:
    """A database with nothing in it: no schema, no migrations."""
    with temporary_database(turnstore_admin_dsn, prefix="turnstore_cli") as dsn:
        yield dsn


async def schemas(dsn: str) -> set[str]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT nspname FROM pg_namespace")
        return {str(row[0]) for row in await cur.fetchall()}


# --------------------------------------------------------------------------- migrate


async def test_migrate_applies_then_reports_up_to_date(
    empty_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_cli("migrate", "--dsn", empty_dsn) == 0
    assert capsys.readouterr().out == "".join(
        f"applied {m.version:04d}_{m.name} to schema 'turnstore'\n" for m in migration_files()
    )
    async with await psycopg.AsyncConnection.connect(empty_dsn) as conn:
        assert (await check_schema(conn)).current

    assert await run_cli("migrate", "--dsn", empty_dsn) == 0
    assert capsys.readouterr().out == "schema 'turnstore' is up to date\n"


async def test_migrate_into_another_schema(
    empty_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_cli("migrate", "--dsn", empty_dsn, "--schema", "chat app") == 0
    assert "to schema 'chat app'" in capsys.readouterr().out
    found = await schemas(empty_dsn)
    assert "chat app" in found
    assert "turnstore" not in found


async def test_migrate_reads_the_dsn_from_the_environment(
    empty_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(ENV_DSN, empty_dsn)
    assert await run_cli("migrate") == 0
    assert capsys.readouterr().out.startswith("applied 0001")


async def test_dsn_option_wins_over_the_environment(
    empty_dsn: str,
    unreachable_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(ENV_DSN, unreachable_dsn)
    assert await run_cli("migrate", "--dsn", empty_dsn) == 0
    assert capsys.readouterr().out.startswith("applied 0001")


async def test_check_fails_on_an_empty_database_and_creates_nothing(
    empty_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = await schemas(empty_dsn)
    assert await run_cli("migrate", "--check", "--dsn", empty_dsn) == EXIT_STORE_ERROR
    assert capsys.readouterr().out == f"schema 'turnstore' is not current (pending: {VERSIONS})\n"
    assert await schemas(empty_dsn) == before


async def test_check_passes_on_a_migrated_database(
    turnstore_pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_cli("migrate", "--check", "--dsn", turnstore_pg_dsn) == 0
    # The layout is named when it is not the plain one (TURNSTORE_TEST_PARTITIONS).
    partitions = partitions_under_test()
    layout = f"; layout: hash-partitioned ({partitions} partitions)" if partitions else ""
    assert (
        capsys.readouterr().out == f"schema 'turnstore' is current (applied: {VERSIONS}{layout})\n"
    )


async def test_migrate_partitions_chooses_the_layout_once(
    empty_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_cli("migrate", "--dsn", empty_dsn, "--partitions", "4") == 0
    out = capsys.readouterr().out
    files = migration_files(4)
    assert (
        out
        == "".join(f"applied {m.version:04d}_{m.name} to schema 'turnstore'\n" for m in files)
        + "layout: hash-partitioned (4 partitions)\n"
    )
    assert await run_cli("migrate", "--dsn", empty_dsn) == 0
    assert capsys.readouterr().out == (
        "schema 'turnstore' is up to date, layout: hash-partitioned (4 partitions)\n"
    )
    assert await run_cli("migrate", "--check", "--dsn", empty_dsn) == 0
    assert "layout: hash-partitioned (4 partitions)" in capsys.readouterr().out
    # Another count: a one-line typed error, nothing changed.
    assert await run_cli("migrate", "--dsn", empty_dsn, "--partitions", "8") == EXIT_STORE_ERROR
    captured = capsys.readouterr()
    assert "hash-partitioned (4 partitions) layout" in captured.err
    assert "Traceback" not in captured.err
    async with await psycopg.AsyncConnection.connect(empty_dsn) as conn:
        assert (await check_schema(conn)).partitions == 4


@pytest.mark.parametrize("bad", ["1", "1025", "x", "-2"])
async def test_migrate_refuses_a_bad_partition_count(
    empty_dsn: str, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    assert await run_cli("migrate", "--dsn", empty_dsn, "--partitions", bad) != 0
    assert "--partitions" in capsys.readouterr().err
    assert "turnstore" not in await schemas(empty_dsn)


async def test_a_changed_migration_is_refused_and_reported_by_check(
    turnstore_pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with await psycopg.AsyncConnection.connect(turnstore_pg_dsn, autocommit=True) as conn:
        await conn.execute(
            "UPDATE turnstore.schema_migrations SET checksum = 'edited' WHERE version = 1"
        )

    assert await run_cli("migrate", "--check", "--dsn", turnstore_pg_dsn) == EXIT_STORE_ERROR
    assert "changed since applied: 0001" in capsys.readouterr().out

    assert await run_cli("migrate", "--dsn", turnstore_pg_dsn) == EXIT_STORE_ERROR
    err = capsys.readouterr().err
    assert err.startswith("turnstore: error: applied migration(s) [1] ")
    assert err.count("\n") == 1


# --------------------------------------------------------------------------- sql


async def test_sql_output_builds_a_current_schema(
    empty_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_cli("sql", "--schema", "app_turns") == 0
    script = capsys.readouterr().out
    assert 'CREATE SCHEMA IF NOT EXISTS "app_turns";' in script
    async with await psycopg.AsyncConnection.connect(empty_dsn, autocommit=True) as conn:
        await conn.execute(script.encode())
        assert (await check_schema(conn, schema="app_turns")).current
        # The tables it made are the ones migrate() expects: nothing left to apply.
        assert await migrate(conn, schema="app_turns") == []


async def test_sql_partitions_builds_the_partitioned_layout(
    empty_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_cli("sql", "--partitions", "4") == 0
    script = capsys.readouterr().out
    assert "SET turnstore.partitions = '4';" in script
    assert "PARTITION BY HASH (tenant_id)" in script
    async with await psycopg.AsyncConnection.connect(empty_dsn, autocommit=True) as conn:
        await conn.execute(script.encode())
        status = await check_schema(conn)
        assert (status.current, status.partitions) == (True, 4)
        assert await migrate(conn) == []


# --------------------------------------------------------------------------- demo

DEMO_STEPS = [
    "turn-1 starts, running",
    "keep-alive refreshes last_progress_at once",
    "turn-1 completed with assistant message msg-1: this caller won the CAS",
    "a late failure report for turn-1 loses the CAS",
    "is rejected: generation_in_progress (running: turn-2)",
    "replay of turn-1",
    "request_in_progress",
    "alice stops turn-2: cancelled",
    "alice retries turn-2: turn-3 starts",
    "turn-3 completed with assistant message msg-3",
    "turn-4 starts, completes with msg-4",
    "tenant B looks up tenant A's turn-1: not found",
    "tenant B tries to start a turn for tenant A: scope_denied",
    "turn-5 starts, then the process streaming it crashes",
    "moves turn-5's timestamps 10 minutes back with an SQL UPDATE",
    "turn-5 is failed with orphan_timeout",
    "turn-6 starts, the chat is not stuck",
]

DEMO_ROWS = {
    "turn-1": ["A", "A-1", "req-1", "completed", "msg-1"],
    "turn-2": ["A", "A-1", "cancelled", "retry-1"],
    "turn-3": ["A", "A-1", "retry-1", "completed", "msg-3"],
    "turn-4": ["B", "B-1", "req-4", "completed", "msg-4"],
    "turn-5": ["B", "B-2", "req-5", "failed", "orphan_timeout"],
    "turn-6": ["B", "B-2", "req-6", "running"],
}


def assert_demo_output(out: str) -> None:
    steps = [line for line in out.splitlines() if re.match(r"^\s*\d+\. ", line)]
    assert len(steps) == len(DEMO_STEPS)
    for line, expected in zip(steps, DEMO_STEPS, strict=True):
        assert expected in line
    rows = {
        line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("turn-")
    }
    assert set(rows) == set(DEMO_ROWS)
    for turn, cells in DEMO_ROWS.items():
        for cell in cells:
            assert cell in rows[turn], (turn, cell)


async def test_demo_on_a_server_leaves_no_schema_behind(
    turnstore_admin_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = await schemas(turnstore_admin_dsn)
    assert await run_cli("demo", "--dsn", turnstore_admin_dsn) == 0
    out = capsys.readouterr().out
    assert_demo_output(out)
    dropped = re.search(r"^dropped schema '(turnstore_demo_[0-9a-f]{8})'$", out, re.MULTILINE)
    assert dropped is not None
    after = await schemas(turnstore_admin_dsn)
    assert dropped.group(1) not in after
    assert after == before


async def test_demo_in_a_schema_named_with_percent_signs(
    turnstore_admin_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = f"demo {uuid.uuid4().hex[:8]} 50%off a%sb"
    assert await run_cli("demo", "--dsn", turnstore_admin_dsn, "--schema", schema) == 0
    out = capsys.readouterr().out
    assert_demo_output(out)
    assert f"dropped schema {schema!r}" in out
    assert schema not in await schemas(turnstore_admin_dsn)


async def test_demo_refuses_a_schema_that_exists_and_leaves_it_alone(
    turnstore_pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with await PostgresStore.open(turnstore_pg_dsn) as store:
        turn = await create(store, "chat")
    assert await run_cli("demo", "--dsn", turnstore_pg_dsn, "--schema", "turnstore") == 1
    assert capsys.readouterr().err == (
        "turnstore: error: schema 'turnstore' already exists; the demo only works in a "
        "schema it creates (and drops afterwards)\n"
    )
    async with await PostgresStore.open(turnstore_pg_dsn) as store:
        assert await reload(store, turn) == turn


def test_demo_on_an_embedded_server_as_a_subprocess() -> None:
    env = {k: v for k, v in os.environ.items() if k not in {ENV_DSN, "TURNSTORE_TEST_DSN"}}
    result = run_subprocess("demo", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("starting an embedded PostgreSQL server")
    assert "PostgreSQL 18" in result.stdout
    assert_demo_output(result.stdout)


# --------------------------------------------------------------------------- sweep


async def create(store: PostgresStore, chat: str) -> Turn:
    tenant = uuid.uuid4()
    params = CreateTurnParams(
        id=uuid.uuid4(),
        tenant_id=tenant,
        chat_id=uuid.uuid5(uuid.NAMESPACE_URL, chat + str(tenant)),
        request_id=uuid.uuid4(),
        requester_type=RequesterType.SYSTEM,
    )
    async with store.connection() as conn:
        return await store.turns.create_turn(conn, AccessScope.allow_all(), params)


async def reload(store: PostgresStore, turn: Turn) -> Turn:
    async with store.connection() as conn:
        found = await store.turns.find_by_chat_and_request_id(
            conn, AccessScope.allow_all(), turn.tenant_id, turn.chat_id, turn.request_id
        )
    assert found is not None
    return found


@pytest.fixture
async def pg_store(turnstore_pg_dsn: str) -> AsyncIterator[PostgresStore]:
    async with await PostgresStore.open(turnstore_pg_dsn) as store:
        yield store


async def test_sweep_fails_stale_turns_only(
    pg_store: PostgresStore, turnstore_pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = await create(pg_store, "stale")
    await PostgresHarness(pg_store).advance_time(301)
    fresh = await create(pg_store, "fresh")

    assert await run_cli("sweep", "--once", "--dsn", turnstore_pg_dsn, "--timeout", "300") == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "swept schema 'turnstore' (timeout 300 s, limit 100): 1 orphan(s) found, "
        "1 failed with orphan_timeout"
    )
    assert str(stale.id) in out
    assert str(fresh.id) not in out

    failed = await reload(pg_store, stale)
    assert failed.state is TurnState.FAILED
    assert failed.error_code == ORPHAN_ERROR_CODE
    assert (await reload(pg_store, fresh)).state is TurnState.RUNNING


async def test_sweep_timeout_decides_what_is_stale(
    pg_store: PostgresStore, turnstore_pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    turn = await create(pg_store, "quiet")
    await PostgresHarness(pg_store).advance_time(120)

    assert await run_cli("sweep", "--once", "--dsn", turnstore_pg_dsn) == 0  # default 300 s
    assert "0 orphan(s) found" in capsys.readouterr().out
    assert (await reload(pg_store, turn)).state is TurnState.RUNNING

    assert await run_cli("sweep", "--once", "--dsn", turnstore_pg_dsn, "--timeout", "60") == 0
    assert "1 failed with orphan_timeout" in capsys.readouterr().out
    assert (await reload(pg_store, turn)).state is TurnState.FAILED


async def test_sweep_limit_bounds_one_scan_oldest_first(
    pg_store: PostgresStore, turnstore_pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    older = await create(pg_store, "older")
    await PostgresHarness(pg_store).advance_time(10)
    newer = await create(pg_store, "newer")
    await PostgresHarness(pg_store).advance_time(400)

    args = ("sweep", "--once", "--dsn", turnstore_pg_dsn, "--limit", "1")
    assert await run_cli(*args) == 0
    assert "1 failed" in capsys.readouterr().out
    assert (await reload(pg_store, older)).state is TurnState.FAILED
    assert (await reload(pg_store, newer)).state is TurnState.RUNNING


async def test_sweep_in_another_schema(empty_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_cli("migrate", "--dsn", empty_dsn, "--schema", "other") == 0
    async with await PostgresStore.open(empty_dsn, schema="other") as store:
        turn = await create(store, "chat")
        await PostgresHarness(store, schema="other").advance_time(400)
        capsys.readouterr()
        assert await run_cli("sweep", "--once", "--dsn", empty_dsn, "--schema", "other") == 0
        assert "swept schema 'other'" in capsys.readouterr().out
        assert (await reload(store, turn)).state is TurnState.FAILED


async def test_sweep_does_nothing_while_another_watchdog_leads(
    pg_store: PostgresStore, turnstore_pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    turn = await create(pg_store, "chat")
    await PostgresHarness(pg_store).advance_time(400)
    async with await psycopg.AsyncConnection.connect(turnstore_pg_dsn, autocommit=True) as leader:
        # Another watchdog's lease, valid for an hour.
        await leader.execute(
            "INSERT INTO turnstore.watchdog_leases (name, holder, expires_at)"
            " VALUES (%s, gen_random_uuid(), clock_timestamp() + interval '1 hour')",
            (WATCHDOG_LEASE_NAME,),
        )
        assert await run_cli("sweep", "--once", "--dsn", turnstore_pg_dsn) == 0
    assert capsys.readouterr().out == (
        "another watchdog is sweeping schema 'turnstore' right now; nothing was done\n"
    )
    assert (await reload(pg_store, turn)).state is TurnState.RUNNING


async def test_sweep_refuses_a_schema_that_is_not_migrated(
    empty_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_cli("sweep", "--once", "--dsn", empty_dsn) == EXIT_STORE_ERROR
    assert capsys.readouterr().err == (
        f"turnstore: error: schema 'turnstore' is not current (pending: {VERSIONS}); "
        "run 'turnstore migrate'\n"
    )


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ("DELETE FROM turnstore.schema_migrations WHERE version = 1", "pending: 0001"),
        (
            "INSERT INTO turnstore.schema_migrations (version, name, checksum)"
            " VALUES (9999, 'future', 'x')",
            "unknown to this turnstore: 9999",
        ),
    ],
    ids=["pending", "unknown"],
)
async def test_sweep_refuses_a_schema_at_another_version_and_touches_nothing(
    pg_store: PostgresStore,
    turnstore_pg_dsn: str,
    change: str,
    problem: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    turn = await create(pg_store, "chat")
    await PostgresHarness(pg_store).advance_time(400)
    async with pg_store.connection() as conn:
        await conn.execute(change.encode())
    assert await run_cli("sweep", "--once", "--dsn", turnstore_pg_dsn) == EXIT_STORE_ERROR
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == (
        "",
        f"turnstore: error: schema 'turnstore' is not current ({problem}); "
        "run 'turnstore migrate'\n",
    )
    assert (await reload(pg_store, turn)).state is TurnState.RUNNING
