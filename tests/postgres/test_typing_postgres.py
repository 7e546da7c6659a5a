"""The protocol, as ``tests/unit/test_typing.py`` types it, run on PostgreSQL."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import psycopg
from typing_extensions import assert_type

from turnstore import TurnStore
from turnstore.postgres import PostgresStore
from typing_support import exercise

#: The PostgreSQL runner, as a user annotates it.
Connection = psycopg.AsyncConnection[Any]


async def test_the_protocol_runs_on_postgres(turnstore_postgres_store: PostgresStore) -> None:
    async with turnstore_postgres_store.transaction() as conn:
        assert_type(conn, Connection)
    async with turnstore_postgres_store.connection() as conn:
        assert_type(conn, Connection)
    assert isinstance(conn, psycopg.AsyncConnection)
    store: TurnStore[Connection] = turnstore_postgres_store
    await exercise(store, uuid4(), uuid4())
