"""pytest plugin registered by the ``turnstore`` package (entry point ``pytest11``).

It defines fixtures, all prefixed ``turnstore_``, and one option; nothing starts unless a
test asks for it. A host runs the conformance suite against its own configuration by
overriding fixtures in its own ``conftest.py``: ``turnstore_schema`` (another schema name),
``turnstore_postgres_store`` (its own pool or store), ``turnstore_backend_name`` (its own
list of backends); or, without code, by choosing backends with ``--turnstore-backend NAME``
(repeatable) or the ``turnstore_backends`` ini key.

- ``turnstore_admin_dsn`` (session): a PostgreSQL server (see ``turnstore.embedded``).
- ``turnstore_template_db``: a database migrated once per schema name, cloned per test;
  with the environment variable ``TURNSTORE_TEST_PARTITIONS=N`` set, migrated with the
  partitioned layout of ``N`` partitions (docs/schema.md, *The partitioned layout*), so
  every PostgreSQL-backed fixture runs on that layout.
- ``turnstore_pg_dsn``: a fresh migrated database for one test, dropped afterwards.
- ``turnstore_postgres_store`` / ``turnstore_memory_store``: an open store of each kind.
- ``turnstore_backend``: a ``BackendHarness``, parametrized over ``memory`` and ``postgres``.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from turnstore.embedded import (
    create_database,
    drop_database,
    postgres_server,
    with_dbname,
)
from turnstore.testing.backends import BackendHarness, MemoryHarness, PostgresHarness

# The sync API's fixtures (``turnstore_sync_*``): pytest finds them as this module's names.
from turnstore.testing.sync_fixtures import (
    turnstore_sync_backend,
    turnstore_sync_backend_name,
    turnstore_sync_memory_store,
    turnstore_sync_postgres_store,
)

if TYPE_CHECKING:
    from turnstore.memory import InMemoryStore
    from turnstore.postgres import PostgresStore

__all__ = [
    "BACKENDS",
    "ENV_PARTITIONS",
    "INI_KEY",
    "OPTION",
    "pytest_addoption",
    "pytest_collection_modifyitems",
    "selected_backends",
    "partitions_under_test",
    "turnstore_admin_dsn",
    "turnstore_backend",
    "turnstore_backend_name",
    "turnstore_memory_store",
    "turnstore_pg_dsn",
    "turnstore_postgres_store",
    "turnstore_schema",
    "turnstore_sync_backend",
    "turnstore_sync_backend_name",
    "turnstore_sync_memory_store",
    "turnstore_sync_postgres_store",
    "turnstore_template_db",
    "turnstore_template_dbs",
]

BACKENDS = ("memory", "postgres")
OPTION = "--turnstore-backend"
INI_KEY = "turnstore_backends"
#: The environment variable choosing the layout the fixtures migrate with.
ENV_PARTITIONS = "TURNSTORE_TEST_PARTITIONS"


def partitions_under_test() -> int | None:
    """The partition count of ``TURNSTORE_TEST_PARTITIONS`` (unset or empty: ``None``, the
    plain layout); a value ``migrate`` would refuse stops the run."""
    from turnstore.errors import InvalidParameterError
    from turnstore.validation import check_partitions

    text = os.environ.get(ENV_PARTITIONS, "").strip()
    if not text:
        return None
    try:
        return check_partitions(int(text), ENV_PARTITIONS)
    except (ValueError, InvalidParameterError) as exc:
        raise pytest.UsageError(f"{ENV_PARTITIONS}={text!r}: {exc}") from exc


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("turnstore")
    group.addoption(
        OPTION,
        action="append",
        choices=BACKENDS,
        default=[],
        metavar="NAME",
        help="run turnstore_backend tests only on this backend (repeatable; default: all)",
    )
    parser.addini(INI_KEY, type="args", default=[], help="backends for turnstore_backend tests")


def selected_backends(config: pytest.Config) -> set[str]:
    """The backends chosen by option or ini key; empty means all."""
    chosen = set(config.getoption(OPTION) or []) | set(config.getini(INI_KEY) or [])
    unknown = chosen - set(BACKENDS)
    if unknown:
        raise pytest.UsageError(f"{INI_KEY}: unknown backend(s) {sorted(unknown)}")
    return chosen


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect ``turnstore_backend`` tests of backends not chosen."""
    chosen = selected_backends(config)
    if not chosen:
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        name = params.get("turnstore_backend_name", params.get("turnstore_sync_backend_name"))
        (drop if name is not None and name not in chosen else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session")
def turnstore_admin_dsn() -> Iterator[str]:
    with postgres_server() as dsn:
        yield dsn


@pytest.fixture(scope="session")
def turnstore_schema() -> str:
    return "turnstore"


@pytest.fixture(scope="session")
def turnstore_template_dbs(turnstore_admin_dsn: str) -> Iterator[dict[str, str]]:
    """Migrated template databases by schema name: made on first use, dropped at the end.

    Keyed by schema so that a directory overriding ``turnstore_schema`` gets a template of
    its own even when the rest of the session uses the default schema.
    """
    templates: dict[str, str] = {}
    try:
        yield templates
    finally:
        for name in templates.values():
            drop_database(turnstore_admin_dsn, name)


@pytest.fixture
def turnstore_template_db(
    turnstore_admin_dsn: str, turnstore_template_dbs: dict[str, str], turnstore_schema: str
) -> str:
    """A database with every migration applied in ``turnstore_schema``, used as TEMPLATE;
    in the layout ``TURNSTORE_TEST_PARTITIONS`` names (``partitions_under_test``)."""
    import psycopg

    from turnstore.postgres import migrate

    name = turnstore_template_dbs.get(turnstore_schema)
    if name is not None:
        return name
    partitions = partitions_under_test()
    name = f"turnstore_tmpl_{uuid.uuid4().hex[:12]}"
    dsn = create_database(turnstore_admin_dsn, name)
    turnstore_template_dbs[turnstore_schema] = name

    async def _migrate() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await migrate(conn, schema=turnstore_schema, partitions=partitions)

    asyncio.run(_migrate())
    return name


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
) -> AsyncIterator[PostgresStore]:
    from turnstore.postgres import PostgresStore

    store = await PostgresStore.open(
        turnstore_pg_dsn, schema=turnstore_schema, min_size=1, max_size=40
    )
    try:
        yield store
    finally:
        await store.close()


@pytest_asyncio.fixture
async def turnstore_memory_store() -> AsyncIterator[InMemoryStore]:
    from turnstore.memory import InMemoryStore
    from turnstore.testing.clock import ManualClock

    store = InMemoryStore(clock=ManualClock())
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(params=BACKENDS)
def turnstore_backend_name(request: pytest.FixtureRequest) -> str:
    """Which backend ``turnstore_backend`` builds; override it to change the list."""
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
    # A host's own store knows its schema best; fall back to the fixture's.
    return PostgresHarness(store=store, schema=getattr(store, "schema", turnstore_schema))
