"""The fault harness itself: its cluster survives a kill and a restart, and its PgBouncer
forwards to it."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from faults.cluster import PgBouncer, PgCluster

pytestmark = pytest.mark.faults


def _select_one(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute("SELECT 1").fetchone()
    assert row is not None
    return int(row[0])


def test_kill_then_start_serves_fresh_connections(pg_cluster: PgCluster) -> None:
    held = pg_cluster.connect()
    try:
        pg_cluster.kill()
        assert not pg_cluster.running()
        with pytest.raises(psycopg.OperationalError):
            held.execute("SELECT 1")
        pg_cluster.start()
        assert _select_one(pg_cluster.dsn()) == 1
    finally:
        held.close()


def test_restart_and_terminate_backends_end_sessions(pg_cluster: PgCluster) -> None:
    for mode in ("fast", "immediate"):
        held = pg_cluster.connect()
        try:
            pg_cluster.restart(mode=mode)
            with pytest.raises(psycopg.OperationalError):
                held.execute("SELECT 1")
        finally:
            held.close()
    held = pg_cluster.connect()
    try:
        assert pg_cluster.terminate_backends() >= 1
        with pytest.raises(psycopg.OperationalError):
            held.execute("SELECT 1")
    finally:
        held.close()
    assert _select_one(pg_cluster.dsn()) == 1


async def test_pgbouncer_pools_transactions(pgbouncer: PgBouncer) -> None:
    """Through the bouncer two autocommit statements of one client may land on different
    server sessions: transaction pooling is really on."""
    conn = await psycopg.AsyncConnection.connect(
        pgbouncer.dsn(), autocommit=True, prepare_threshold=None
    )
    async with conn:
        row = await (await conn.execute("SHOW server_version_num")).fetchone()
        assert row is not None
        assert int(row[0]) >= 150000
    admin = await psycopg.AsyncConnection.connect(
        pgbouncer.dsn("pgbouncer"), autocommit=True, prepare_threshold=None
    )
    async with admin:
        # The admin console speaks the simple protocol only.
        cur = await asyncio.wait_for(admin.execute("SHOW CONFIG", prepare=False), timeout=10)
        config = {str(r[0]): str(r[1]) for r in await cur.fetchall()}
    assert config["pool_mode"] == "transaction"
