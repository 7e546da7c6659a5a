"""The PostgreSQL repository compiles each scope object once and reuses it: the cache must
never hand one caller's compiled scope to another, and must stay bounded."""

from __future__ import annotations

import gc
import random
import uuid
import weakref
from typing import Any

import pytest

from turnstore import (
    AccessScope,
    CreateTurnParams,
    InvalidParameterError,
    RequesterType,
    Turn,
)
from turnstore.postgres import PostgresStore
from turnstore.postgres.scope import SCOPE_CACHE_SIZE

ALLOW = AccessScope.allow_all()


async def _turn(store: PostgresStore, tenant: uuid.UUID) -> Turn:
    params = CreateTurnParams(
        id=uuid.uuid4(),
        tenant_id=tenant,
        chat_id=uuid.uuid4(),
        request_id=uuid.uuid4(),
        requester_type=RequesterType.SYSTEM,
    )
    async with store.connection() as conn:
        return await store.turns.create_turn(conn, ALLOW, params)


async def test_each_new_scope_object_sees_only_its_own_tenant(
    turnstore_postgres_store: Any,
) -> None:
    """Scopes built per request and dropped right after: CPython hands a new object the
    address (``id``) of a dead one, so a cache keyed by ``id`` alone would give the new
    scope the old one's compiled SQL. Runs past the cache size to go through its reset."""
    store: PostgresStore = turnstore_postgres_store
    tenants = (uuid.uuid4(), uuid.uuid4())
    turns = [await _turn(store, tenant) for tenant in tenants]
    # Irregular order, so that a reused address is not always reused by the same tenant.
    order = random.Random(7).choices((0, 1), k=2 * SCOPE_CACHE_SIZE + 10)
    async with store.connection() as conn:
        for i, own in enumerate(order):
            scope = AccessScope.for_tenant(tenants[own])
            for which, turn in enumerate(turns):
                found = await store.turns.find_by_chat_and_request_id(
                    conn, scope, turn.tenant_id, turn.chat_id, turn.request_id
                )
                assert (found is not None) == (which == own), (i, which)
                changed = await store.turns.update_progress_at(conn, scope, turn.id)
                assert changed == (1 if which == own else 0), (i, which)
            del scope


async def test_the_cache_lets_go_of_old_scopes(turnstore_postgres_store: Any) -> None:
    """A long-running process sees a new scope per request; the cache must not keep them
    all alive."""
    store: PostgresStore = turnstore_postgres_store
    turn = await _turn(store, uuid.uuid4())
    first = AccessScope.for_tenant(turn.tenant_id)
    first_ref = weakref.ref(first)
    async with store.connection() as conn:
        assert await store.turns.update_progress_at(conn, first, turn.id) == 1
        del first
        for _ in range(SCOPE_CACHE_SIZE + 1):
            scope = AccessScope.for_tenant(turn.tenant_id)
            assert await store.turns.update_progress_at(conn, scope, turn.id) == 1
    gc.collect()
    assert first_ref() is None


async def test_a_cached_scope_still_refuses_a_non_scope(turnstore_postgres_store: Any) -> None:
    store: PostgresStore = turnstore_postgres_store
    turn = await _turn(store, uuid.uuid4())
    async with store.connection() as conn:
        assert await store.turns.update_progress_at(conn, ALLOW, turn.id) == 1
        with pytest.raises(InvalidParameterError):
            await store.turns.update_progress_at(conn, "TRUE", turn.id)  # type: ignore[arg-type]
