"""Fixtures of the fault tests: a PostgreSQL cluster of their own, a PgBouncer in front of
it, and a migrated database per test.

Without ``initdb``/``pg_ctl`` or ``pgbouncer`` the tests that need them are skipped, except
under CI (``CI=true``), where a missing tool is a failure: CI installs them.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio

from faults.cluster import PgBouncer, PgCluster, find_pg_bindir, find_pgbouncer
from turnstore.postgres import DEFAULT_SCHEMA, migrate


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is required under CI (CI=true) but is not installed")
    pytest.skip(f"{what} not installed; the fault tests need it")


@pytest.fixture(scope="session")
def pg_bindir() -> Path:
    bindir = find_pg_bindir()
    if bindir is None:
        _missing("PostgreSQL server binaries (pg_config --bindir with initdb, pg_ctl)")
    assert bindir is not None
    return bindir


@pytest.fixture(scope="session")
def pgbouncer_binary() -> Path:
    binary = find_pgbouncer()
    if binary is None:
        _missing("pgbouncer (Debian package pgbouncer)")
    assert binary is not None
    return binary


@pytest.fixture(scope="session")
def _session_cluster(pg_bindir: Path) -> Iterator[PgCluster]:
    cluster = PgCluster(pg_bindir)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_cluster(_session_cluster: PgCluster) -> PgCluster:
    """The fault tests' own cluster, running at the start of the test (a test may kill,
    stop or restart it; the next test gets it back up)."""
    _session_cluster.ensure_running()
    return _session_cluster


@pytest.fixture
def pgbouncer(pgbouncer_binary: Path, pg_cluster: PgCluster) -> Iterator[PgBouncer]:
    """A fresh transaction-pooling PgBouncer in front of ``pg_cluster``, stopped afterwards
    (so no server session a test left locked outlives it)."""
    bouncer = PgBouncer(pgbouncer_binary, pg_cluster)
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.destroy()


@dataclass(frozen=True)
class FaultDatabase:
    """One throwaway database of the fault cluster."""

    name: str
    cluster: PgCluster
    schema: str = DEFAULT_SCHEMA

    @property
    def dsn(self) -> str:
        """Straight to the server."""
        return self.cluster.dsn(self.name)

    def via(self, bouncer: PgBouncer) -> str:
        """Through ``bouncer``."""
        return bouncer.dsn(self.name)


def _new_database(cluster: PgCluster) -> FaultDatabase:
    db = FaultDatabase(f"faults_{uuid.uuid4().hex[:12]}", cluster)
    cluster.create_database(db.name)
    return db


@pytest.fixture
def empty_db(pg_cluster: PgCluster) -> Iterator[FaultDatabase]:
    """A new database with no turnstore schema, dropped (sessions and all) afterwards."""
    db = _new_database(pg_cluster)
    try:
        yield db
    finally:
        pg_cluster.ensure_running()
        pg_cluster.drop_database(db.name)


@pytest_asyncio.fixture
async def fault_db(empty_db: FaultDatabase) -> FaultDatabase:
    """A new database migrated straight on the server (not through any pooler)."""
    conn = await psycopg.AsyncConnection.connect(empty_db.dsn, autocommit=True)
    async with conn:
        await asyncio.wait_for(migrate(conn, schema=empty_db.schema), timeout=60)
    return empty_db
