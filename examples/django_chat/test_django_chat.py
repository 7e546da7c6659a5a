"""The example's view through Django's test client: the message and the completed turn
commit together, and an exception inside ``atomic()`` rolls both back."""

from __future__ import annotations

import uuid

import psycopg

from turnstore import AccessScope, TurnState

ALLOW = AccessScope.allow_all()


def turn_state(dsn: str, chat_id: uuid.UUID, request_id: uuid.UUID) -> TurnState | None:
    from chat.views import TENANT

    from turnstore.sync.postgres import PostgresTurnRepository

    with psycopg.connect(dsn, autocommit=True) as conn:
        turn = PostgresTurnRepository().find_by_chat_and_request_id(
            conn, ALLOW, TENANT, chat_id, request_id
        )
    return None if turn is None else turn.state


def test_completes_the_turn_with_the_message_and_replays(example_dsn: str) -> None:
    from chat.models import Message
    from django.test import Client

    chat_id, request_id = uuid.uuid4(), uuid.uuid4()
    url = f"/chats/{chat_id}/turns/{request_id}"
    client = Client()
    first = client.post(url, data=b"hi", content_type="text/plain")
    assert first.status_code == 200, first.content
    assert first.json()["text"] == "You said: hi"
    assert turn_state(example_dsn, chat_id, request_id) is TurnState.COMPLETED
    assert Message.objects.filter(chat_id=chat_id).count() == 1
    again = client.post(url, data=b"hi", content_type="text/plain")
    assert again.json() == {"replay": True, "text": "You said: hi"}
    assert Message.objects.filter(chat_id=chat_id).count() == 1


def test_an_error_inside_atomic_rolls_back_the_completion_and_the_message(
    example_dsn: str,
) -> None:
    from chat.models import Message
    from django.test import Client

    chat_id, request_id = uuid.uuid4(), uuid.uuid4()
    client = Client(raise_request_exception=False)
    response = client.post(
        f"/chats/{chat_id}/turns/{request_id}?fail=1", data=b"hi", content_type="text/plain"
    )
    assert response.status_code == 500
    # The turn began (committed before atomic) but its completion rolled back with the
    # message: still running, and no message row.
    assert turn_state(example_dsn, chat_id, request_id) is TurnState.RUNNING
    assert not Message.objects.filter(chat_id=chat_id).exists()


def test_a_turn_begun_inside_atomic_rolls_back_with_the_message(example_dsn: str) -> None:
    import pytest
    from chat.models import Message
    from chat.views import TENANT, USER, lifecycle
    from django.db import connection, transaction

    from turnstore import CreateTurnParams, RequesterType

    params = CreateTurnParams(
        id=uuid.uuid4(),
        tenant_id=TENANT,
        chat_id=uuid.uuid4(),
        request_id=uuid.uuid4(),
        requester_type=RequesterType.USER,
        requester_user_id=USER,
    )

    def request() -> None:
        with transaction.atomic():
            started = lifecycle().begin_turn(ALLOW, params, runner=connection.connection)
            assert started.turn is not None
            Message.objects.create(chat_id=params.chat_id, turn_id=started.turn.id, text="x")
            raise RuntimeError("the request fails")

    with pytest.raises(RuntimeError):
        request()
    assert turn_state(example_dsn, params.chat_id, params.request_id) is None
    assert not Message.objects.filter(chat_id=params.chat_id).exists()
