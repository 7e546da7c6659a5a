"""The turnstore pytest plugin's fixtures for the sync API (``turnstore.sync``).

They mirror the asyncio fixtures of ``turnstore.testing.plugin`` and share their server,
template and database fixtures: ``turnstore_sync_postgres_store`` /
``turnstore_sync_memory_store`` give an open sync store of each kind, and
``turnstore_sync_backend`` a sync ``BackendHarness``, parametrized over ``memory`` and
``postgres`` (``--turnstore-backend`` chooses among them as it does for the asyncio ones),
which the sync conformance suite (``turnstore.sync.testing.conformance``) drives.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from turnstore.sync.testing.backends import BackendHarness, MemoryHarness, PostgresHarness

__all__ = [
    "turnstore_sync_backend",
    "turnstore_sync_backend_name",
    "turnstore_sync_memory_store",
    "turnstore_sync_postgres_store",
]

BACKENDS = ("memory", "postgres")


@pytest.fixture
def turnstore_sync_postgres_store(turnstore_pg_dsn: str, turnstore_schema: str) -> Iterator[Any]:
    from turnstore.sync.postgres import PostgresStore

    store = PostgresStore.open(turnstore_pg_dsn, schema=turnstore_schema, min_size=1, max_size=40)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def turnstore_sync_memory_store() -> Iterator[Any]:
    from turnstore.sync.memory import InMemoryStore
    from turnstore.testing.clock import ManualClock

    store = InMemoryStore(clock=ManualClock())
    try:
        yield store
    finally:
        store.close()


@pytest.fixture(params=BACKENDS)
def turnstore_sync_backend_name(request: pytest.FixtureRequest) -> str:
    """Which backend ``turnstore_sync_backend`` builds; override it to change the list."""
    return str(request.param)


@pytest.fixture
def turnstore_sync_backend(
    request: pytest.FixtureRequest, turnstore_sync_backend_name: str, turnstore_schema: str
) -> BackendHarness:
    """The sync backend under test, as a harness; use ``.store`` for the ``TurnStore``."""
    if turnstore_sync_backend_name == "memory":
        store = request.getfixturevalue("turnstore_sync_memory_store")
        return MemoryHarness(store=store, clock=store.clock)
    store = request.getfixturevalue("turnstore_sync_postgres_store")
    return PostgresHarness(store=store, schema=getattr(store, "schema", turnstore_schema))
