"""``post_turn``: begin a turn, "generate" an answer, then store the message and complete
the turn in one transaction on Django's own connection."""

from __future__ import annotations

import functools
import uuid

from django.conf import settings
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse

from chat.models import Message
from turnstore import AccessScope, CreateTurnParams, RequesterType
from turnstore.sync import PostgresStore, StartKind, TurnLifecycle

__all__ = ["post_turn"]

# The example trusts one fixed tenant and user; a real app takes them from the session.
TENANT = uuid.UUID("00000000-0000-7000-8000-000000000001")
USER = uuid.UUID("00000000-0000-7000-8000-000000000002")


@functools.cache
def lifecycle() -> TurnLifecycle[object]:
    """One store per process: its small pool serves calls made without a runner."""
    store = PostgresStore.open(settings.TURNSTORE_DSN, min_size=1, max_size=2)
    return TurnLifecycle(store)


def generate_answer(prompt: str) -> str:
    return f"You said: {prompt}"


def post_turn(request: HttpRequest, chat_id: uuid.UUID, request_id: uuid.UUID) -> HttpResponse:
    turns = lifecycle()
    scope = AccessScope.for_tenant(TENANT)
    connection.ensure_connection()
    conn = connection.connection  # the psycopg.Connection under Django's connection
    params = CreateTurnParams(
        id=uuid.uuid4(),
        tenant_id=TENANT,
        chat_id=chat_id,
        request_id=request_id,
        requester_type=RequesterType.USER,
        requester_user_id=USER,
    )
    # Outside atomic(): Django's connection is in autocommit, so the running turn commits
    # at once and a concurrent request for the same chat sees it.
    started = turns.begin_turn(scope, params, runner=conn)
    if started.kind is StartKind.REPLAY:
        assert started.turn is not None
        message = Message.objects.get(turn_id=started.turn.id)
        return JsonResponse({"replay": True, "text": message.text})
    if started.kind is not StartKind.STARTED or started.turn is None:
        return JsonResponse({"rejected": str(started.reason)}, status=409)
    answer = generate_answer(request.body.decode() or "hello")
    with transaction.atomic():
        message = Message.objects.create(chat_id=chat_id, turn_id=started.turn.id, text=answer)
        turns.complete_turn(scope, started.turn, message.id, runner=connection.connection)
        if request.GET.get("fail"):
            raise RuntimeError("failing after the writes: both roll back")
    return JsonResponse({"replay": False, "text": answer, "turn_id": str(started.turn.id)})
