"""The serving process killed mid-stream: the turn stays running until the orphan
watchdog fails it; then the chat is usable again. Runs on a database of its own, so its
watchdog's leadership (a lease row per schema) is its own too."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from fastapi_chat.tests.conftest import Server, Streamed, User, read_events, stream
from turnstore.embedded import temporary_database

#: The shortest orphan timeout the watchdog accepts.
ORPHAN_TIMEOUT = {"FASTAPI_CHAT_ORPHAN_TIMEOUT_SECS": "60"}


@pytest.fixture
def crash_database(turnstore_admin_dsn: str) -> Iterator[str]:
    with temporary_database(turnstore_admin_dsn, prefix="fastapi_chat_crash") as dsn:
        yield dsn


async def test_a_killed_server_leaves_an_orphan_that_the_watchdog_fails(
    crash_database: str,
) -> None:
    user = User()
    body = {"text": " ".join(["word"] * 300), "request_id": str(uuid.uuid4())}
    first = Server(crash_database, **ORPHAN_TIMEOUT).start()
    got = Streamed(200)
    try:
        async with (
            httpx.AsyncClient(base_url=first.url, timeout=30) as http,
            http.stream("POST", user.path(), json=body, headers=user.headers) as response,
        ):
            with pytest.raises(httpx.TransportError):  # noqa: PT012 - the kill ends the body
                async for event in read_events(response, got):
                    if event == "token" and len(got.tokens) == 3:
                        first.kill()
    finally:
        first.stop()
    turn_id = got.turn["turn_id"]

    second = Server(crash_database, **ORPHAN_TIMEOUT).start()
    try:
        async with httpx.AsyncClient(base_url=second.url, timeout=30) as http:
            turn = (await http.get(user.path(f"turns/{turn_id}"), headers=user.headers)).json()
            assert turn["state"] == "running"
            busy = await stream(
                http, "POST", user.path(), user, {"text": "hello?", "request_id": str(uuid.uuid4())}
            )
            assert busy.status == 409
            assert busy.body is not None
            assert busy.body["error"]["code"] == "generation_in_progress"

            # PostgreSQL's clock cannot be moved: age the turn's last sign of life instead,
            # and let the killed process's watchdog lease lapse (it would after its 30 s).
            with psycopg.connect(crash_database, autocommit=True) as conn:
                conn.execute(
                    "UPDATE turnstore.chat_turns"
                    " SET last_progress_at = now() - interval '10 minutes' WHERE id = %s",
                    (uuid.UUID(turn_id),),
                )
                conn.execute(
                    "UPDATE turnstore.watchdog_leases SET expires_at = now() - interval '1 second'"
                )
            sweep = await http.post("/admin/sweep")
            assert sweep.status_code == 200
            assert sweep.json()["leader"] is True

            turn = (await http.get(user.path(f"turns/{turn_id}"), headers=user.headers)).json()
            assert (turn["state"], turn["error_code"]) == ("failed", "orphan_timeout")
            after = await stream(
                http,
                "POST",
                user.path(),
                user,
                {"text": "hello again", "request_id": str(uuid.uuid4())},
            )
            assert after.end is not None
            assert after.end["state"] == "completed"
            history = (await http.get(user.path(), headers=user.headers)).json()["messages"]
            # The killed turn kept its user message and got no answer.
            assert [m["role"] for m in history] == ["user", "user", "assistant"]
    finally:
        second.stop()
