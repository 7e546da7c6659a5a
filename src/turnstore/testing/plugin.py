"""pytest plugin registered by the ``turnstore`` package (entry point ``pytest11``).

It only defines fixtures, all prefixed ``turnstore_``; none starts anything unless a test
asks for it. A host overrides ``turnstore_schema`` or ``turnstore_postgres_store`` in its
own ``conftest.py`` to run the conformance suite against its own configuration.

- ``turnstore_admin_dsn`` (session): a PostgreSQL server (see ``turnstore.testing.server``).
- ``turnstore_template_db`` (session): a database migrated once, cloned per test.
- ``turnstore_pg_dsn``: a fresh migrated database for one test, dropped afterwards.
- ``turnstore_postgres_store`` / ``turnstore_memory_store``: an open store of each kind.
- ``turnstore_backend``: a ``BackendHarness``, parametrized over ``memory`` and ``postgres``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from turnstore.testing.backends import BackendHarness, MemoryHarness, PostgresHarness
from turnstore.testing.server import (
    create_database,
    drop_database,
    postgres_server,
    with_dbname,
)

BACKENDS = ("memory", "postgres")


@pytest.fixture(scope="session")
def turnstore_admin_dsn() -> Iterator[str]:
    with postgres_server() as dsn:
        yield dsn


@pytest.fixture(scope="session")
def turnstore_schema() -> str:
    return "turnstore"


@pytest.fixture(scope="session")
def turnstore_template_db(turnstore_admin_dsn: str, turnstore_schema: str) -> Iterator[str]:
    """A database with every migration applied, used as TEMPLATE for per-test databases."""
    import psycopg

    from turnstore.postgres import migrate

    name = f"turnstore_tmpl_{uuid.uuid4().hex[:12]}"
    dsn = create_database(turnstore_admin_dsn, name)

    async def _migrate() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await migrate(conn, schema=turnstore_schema)

    asyncio.run(_migrate())
    try:
        yield name
    finally:
        drop_database(turnstore_admin_dsn, name)


@pytest.fixture
def turnstore_pg_dsn(turnstore_admin_dsn: str, turnstore_template_db: str) -> Iterator[str]:
    name = f"turnstore_t_{uuid.uuid4().hex[:12]}"
    create_database(turnstore_admin_dsn, name, template=turnstore_template_db)
    try:
        yield with_dbname(turnstore_admin_dsn, name)
    finally:
        drop_database(turnstore_admin_dsn, name)


@pytest_asyncio.fixture
async def turnstore_postgres_store(
    turnstore_pg_dsn: str, turnstore_schema: str
) -> AsyncIterator[Any]:
    from turnstore.postgres import PostgresStore

    store = await PostgresStore.open(
        turnstore_pg_dsn, schema=turnstore_schema, min_size=1, max_size=40
    )
    try:
        yield store
    finally:
        await store.close()


@pytest_asyncio.fixture
async def turnstore_memory_store() -> AsyncIterator[Any]:
    from turnstore.memory import InMemoryStore
    from turnstore.testing.clock import ManualClock

    store = InMemoryStore(clock=ManualClock())
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(params=BACKENDS)
def turnstore_backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def turnstore_backend(
    request: pytest.FixtureRequest, turnstore_backend_name: str, turnstore_schema: str
) -> BackendHarness:
    """The backend under test, as a harness; use ``.store`` for the ``TurnStore``."""
    if turnstore_backend_name == "memory":
        store = request.getfixturevalue("turnstore_memory_store")
        return MemoryHarness(store=store, clock=store.clock)
    store = request.getfixturevalue("turnstore_postgres_store")
    return PostgresHarness(store=store, schema=turnstore_schema)
