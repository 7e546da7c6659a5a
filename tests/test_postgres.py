"""PostgreSQL-specific tests of ``turnstore.postgres``.

The backend-neutral behaviour of the 14 repository methods is covered by the conformance
suite; this module covers what only PostgreSQL has: the schema's constraints, migrations,
the compiled scope, the chat lock of ``find_latest_for_update``, driver-error mapping,
and the store's pool handling.
"""

from __future__ import annotations

import uuid
from typing import Any

from turnstore import AccessScope, CasCompleteParams, CreateTurnParams, RequesterType, TurnState
from turnstore.postgres import PostgresStore


def _create_params(**overrides: Any) -> CreateTurnParams:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "tenant_id": uuid.uuid4(),
        "chat_id": uuid.uuid4(),
        "request_id": uuid.uuid4(),
        "requester_type": RequesterType.SYSTEM,
    }
    values.update(overrides)
    return CreateTurnParams(**values)


async def test_create_find_complete_round_trip(turnstore_postgres_store: PostgresStore) -> None:
    store = turnstore_postgres_store
    params = _create_params()
    scope = AccessScope.for_tenant(params.tenant_id)
    async with store.transaction() as conn:
        created = await store.turns.create_turn(conn, scope, params)
        assert created.state is TurnState.RUNNING
        assert created.started_at == created.last_progress_at == created.updated_at
        won = await store.turns.cas_update_completed(
            conn, scope, CasCompleteParams(turn_id=params.id, assistant_message_id=uuid.uuid4())
        )
        assert won == 1
    async with store.connection() as conn:
        found = await store.turns.find_by_chat_and_request_id(
            conn, scope, params.chat_id, params.request_id
        )
    assert found is not None
    assert found.state is TurnState.COMPLETED
    assert found.completed_at is not None
    assert found.completed_at >= found.started_at
