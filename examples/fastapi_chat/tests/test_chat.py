"""The chat service end to end: uvicorn in a subprocess, httpx as the client, PostgreSQL
behind (see conftest.py)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import httpx

from fastapi_chat.model import FAIL_MARKER, FakeModel
from fastapi_chat.tests.conftest import Server, Streamed, User, read_events, stream


def words(count: int) -> str:
    return " ".join(f"w{i}" for i in range(count))


def send_body(text: str, request_id: uuid.UUID | None = None) -> dict[str, str]:
    return {"text": text, "request_id": str(request_id or uuid.uuid4())}


async def get_json(http: httpx.AsyncClient, url: str, user: User) -> tuple[int, Any]:
    response = await http.get(url, headers=user.headers)
    return response.status_code, response.json()


async def turn_state(http: httpx.AsyncClient, user: User, turn_id: str) -> dict[str, Any]:
    status, body = await get_json(http, user.path(f"turns/{turn_id}"), user)
    assert status == 200, body
    result: dict[str, Any] = body
    return result


async def wait_for_state(
    http: httpx.AsyncClient, user: User, turn_id: str, state: str
) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        turn = await turn_state(http, user, turn_id)
        if turn["state"] == state or time.monotonic() > deadline:
            assert turn["state"] == state, turn
            return turn
        await asyncio.sleep(0.05)


async def message_roles(http: httpx.AsyncClient, user: User) -> list[tuple[str, str]]:
    status, body = await get_json(http, user.path(), user)
    if status == 404:
        return []
    return [(m["role"], m["content"]) for m in body["messages"]]


async def test_a_message_streams_its_answer_and_stores_it(client: httpx.AsyncClient) -> None:
    user = User()
    prompt = "hello there turnstore"
    got = await stream(client, "POST", user.path(), user, send_body(prompt))
    assert got.status == 200
    assert got.turn["replay"] is False
    assert got.tokens == FakeModel.tokens(prompt)
    assert got.end is not None
    assert got.end["state"] == "completed"
    turn = await turn_state(client, user, got.turn["turn_id"])
    assert turn["state"] == "completed"
    assert turn["assistant_message_id"] == got.end["message_id"]
    assert await message_roles(client, user) == [
        ("user", prompt),
        ("assistant", FakeModel.answer(prompt)),
    ]


async def test_a_disconnect_does_not_stop_the_answer_and_a_resend_replays_it(
    client: httpx.AsyncClient,
) -> None:
    user = User()
    prompt, request_id = words(60), uuid.uuid4()
    partial = Streamed(200)
    async with client.stream(
        "POST", user.path(), json=send_body(prompt, request_id), headers=user.headers
    ) as response:
        async for event in read_events(response, partial):
            if event == "token" and len(partial.tokens) == 3:
                break  # the client goes away mid-stream
    turn_id = partial.turn["turn_id"]
    await wait_for_state(client, user, turn_id, "completed")
    stored = await message_roles(client, user)
    assert stored == [("user", prompt), ("assistant", FakeModel.answer(prompt))]

    again = await stream(client, "POST", user.path(), user, send_body(prompt, request_id))
    assert again.status == 200
    assert again.turn == {**partial.turn, "replay": True}
    assert again.text == FakeModel.answer(prompt)
    assert again.end is not None
    assert again.end["state"] == "completed"
    assert await message_roles(client, user) == stored  # nothing new written


async def test_a_double_submit_streams_once_and_refuses_once(client: httpx.AsyncClient) -> None:
    user = User()
    prompt, request_id = words(40), uuid.uuid4()
    first = Streamed(200)
    async with client.stream(
        "POST", user.path(), json=send_body(prompt, request_id), headers=user.headers
    ) as response:
        events = read_events(response, first)
        assert await anext(events) == "turn"
        same = await stream(client, "POST", user.path(), user, send_body(prompt, request_id))
        other = await stream(client, "POST", user.path(), user, send_body("another question"))
        async for _ in events:
            pass
    assert first.text == FakeModel.answer(prompt)
    assert same.status == 409
    # A resend of a request still running: its own code, and retrying later helps.
    assert same.body == {
        "error": {
            "code": "request_in_progress",
            "message": "the request id is already used by another turn of this chat",
            "retryable": True,
        }
    }
    assert other.status == 409
    assert other.body is not None
    assert other.body["error"]["code"] == "generation_in_progress"
    assert other.body["error"]["retryable"] is True
    assert other.body["error"]["running_turn_id"] == first.turn["turn_id"]
    assert [role for role, _ in await message_roles(client, user)] == ["user", "assistant"]


async def test_cancel_stops_the_stream_and_writes_no_answer(client: httpx.AsyncClient) -> None:
    user = User()
    prompt = words(300)
    got = Streamed(200)
    cancelled: httpx.Response | None = None
    async with client.stream(
        "POST", user.path(), json=send_body(prompt), headers=user.headers
    ) as response:
        async for event in read_events(response, got):
            if event == "token" and len(got.tokens) == 3:
                url = user.path(f"turns/{got.turn['turn_id']}/cancel")
                cancelled = await client.post(url, headers=user.headers)
    assert cancelled is not None
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    assert got.end is not None
    assert got.end["state"] == "cancelled"
    assert got.end["message_id"] is None
    assert len(got.tokens) < len(FakeModel.tokens(prompt))
    assert await message_roles(client, user) == [("user", prompt)]

    again = await client.post(
        user.path(f"turns/{got.turn['turn_id']}/cancel"), headers=user.headers
    )
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "turn_not_running"
    # The chat is usable again at once.
    after = await stream(client, "POST", user.path(), user, send_body("next"))
    assert after.end is not None
    assert after.end["state"] == "completed"


async def test_a_failing_model_fails_the_turn(client: httpx.AsyncClient) -> None:
    user = User()
    got = await stream(client, "POST", user.path(), user, send_body(f"please {FAIL_MARKER}"))
    assert got.end == {"state": "failed", "message_id": None, "error_code": "model_error"}
    turn = await turn_state(client, user, got.turn["turn_id"])
    assert (turn["state"], turn["error_code"]) == ("failed", "model_error")


async def test_retry_edit_and_delete_the_last_turn(client: httpx.AsyncClient) -> None:
    user = User()
    first = await stream(client, "POST", user.path(), user, send_body("first question"))
    first_id = first.turn["turn_id"]

    retried = await stream(client, "POST", user.path(f"turns/{first_id}/retry"), user)
    assert retried.status == 200
    assert retried.text == FakeModel.answer("first question")
    assert retried.turn["turn_id"] != first_id
    status, body = await get_json(client, user.path(f"turns/{first_id}"), user)
    assert (status, body["error"]["code"]) == (404, "turn_not_found")

    edited = await stream(
        client,
        "POST",
        user.path(f"turns/{retried.turn['turn_id']}/edit"),
        user,
        {"text": "edited question"},
    )
    assert edited.text == FakeModel.answer("edited question")
    assert await message_roles(client, user) == [
        ("user", "edited question"),
        ("assistant", FakeModel.answer("edited question")),
    ]

    second = await stream(client, "POST", user.path(), user, send_body("second question"))
    stale = await stream(client, "POST", user.path(f"turns/{edited.turn['turn_id']}/retry"), user)
    assert stale.status == 409
    assert stale.body is not None
    assert stale.body["error"]["code"] == "not_latest_turn"

    someone_else = User(tenant_id=user.tenant_id, chat_id=user.chat_id)
    forbidden = await client.delete(
        user.path(f"turns/{second.turn['turn_id']}"), headers=someone_else.headers
    )
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["code"] == "forbidden"

    deleted = await client.delete(
        user.path(f"turns/{second.turn['turn_id']}"), headers=user.headers
    )
    assert deleted.status_code == 204
    roles = await message_roles(client, user)
    assert ("user", "second question") not in roles
    assert len(roles) == 2


async def test_another_tenant_sees_nothing(client: httpx.AsyncClient) -> None:
    owner = User()
    got = await stream(client, "POST", owner.path(), owner, send_body("secret"))
    turn_id = got.turn["turn_id"]
    intruder = User(chat_id=owner.chat_id)
    responses = [
        await client.get(owner.path(), headers=intruder.headers),
        await client.get(owner.path(f"turns/{turn_id}"), headers=intruder.headers),
        await client.post(owner.path(f"turns/{turn_id}/cancel"), headers=intruder.headers),
        await client.post(owner.path(f"turns/{turn_id}/retry"), headers=intruder.headers),
        await client.post(
            owner.path(f"turns/{turn_id}/edit"), json={"text": "x"}, headers=intruder.headers
        ),
        await client.delete(owner.path(f"turns/{turn_id}"), headers=intruder.headers),
    ]
    assert [r.status_code for r in responses] == [404] * 6
    codes = {r.json()["error"]["code"] for r in responses}
    assert codes == {"chat_not_found", "turn_not_found"}
    # The owner's turn is untouched.
    assert (await turn_state(client, owner, turn_id))["state"] == "completed"


async def test_requests_without_a_valid_caller_or_body_are_refused(
    client: httpx.AsyncClient,
) -> None:
    user = User()
    no_tenant = await client.post(user.path(), json=send_body("hi"), headers={"X-User-Id": "x"})
    assert no_tenant.status_code == 422
    assert no_tenant.json()["error"]["code"] == "invalid_parameter"
    bad_body = await client.post(user.path(), json={"text": ""}, headers=user.headers)
    assert bad_body.status_code == 422
    assert bad_body.json()["error"] == {
        "code": "invalid_parameter",
        "message": bad_body.json()["error"]["message"],
        "retryable": False,
    }


async def test_the_metrics_endpoint_shows_turnstore_metrics(client: httpx.AsyncClient) -> None:
    user = User()
    await stream(client, "POST", user.path(), user, send_body("count me"))
    metrics = (await client.get("/metrics/")).text
    assert re.search(r"^turnstore_turns_started_total\{.*\} [1-9]", metrics, re.M)
    assert re.search(
        r'^turnstore_turns_finalized_total\{.*state="completed".*\} [1-9]', metrics, re.M
    )
    assert 'turnstore_watchdog_scan_duration_seconds_bucket{le="0.001"' in metrics


async def test_a_cancel_served_by_another_instance_rolls_the_answer_back(
    client: httpx.AsyncClient, database: str
) -> None:
    """The generating instance does not hear of the cancel until its next keep-alive
    write, so it generates to the end; its complete then loses the CAS, and the answer
    written in the same transaction is rolled back."""
    other = Server(database).start()
    try:
        user = User()
        prompt = words(80)
        got = Streamed(200)
        async with (
            httpx.AsyncClient(base_url=other.url, timeout=30) as elsewhere,
            client.stream(
                "POST", user.path(), json=send_body(prompt), headers=user.headers
            ) as response,
        ):
            async for event in read_events(response, got):
                if event == "token" and len(got.tokens) == 3:
                    url = user.path(f"turns/{got.turn['turn_id']}/cancel")
                    cancelled = await elsewhere.post(url, headers=user.headers)
                    assert cancelled.status_code == 200
    finally:
        other.stop()
    assert got.tokens == FakeModel.tokens(prompt)  # this instance did not know
    assert got.end == {"state": "cancelled", "message_id": None, "error_code": None}
    assert await message_roles(client, user) == [("user", prompt)]
    turn = await turn_state(client, user, got.turn["turn_id"])
    assert (turn["state"], turn["assistant_message_id"]) == ("cancelled", None)
