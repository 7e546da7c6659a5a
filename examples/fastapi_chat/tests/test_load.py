"""200 concurrent streams through one service on a pool of 10 connections all complete.
The time is printed (and quoted in README.md), not asserted."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest

from fastapi_chat.model import FakeModel
from fastapi_chat.tests.conftest import User, stream

STREAMS = 200
PROMPT = " ".join(f"token{i}" for i in range(10))


async def test_200_concurrent_streams_on_a_pool_of_10_all_complete(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    users = [User() for _ in range(STREAMS)]
    started = time.perf_counter()
    results = await asyncio.gather(
        *(
            stream(
                client,
                "POST",
                user.path(),
                user,
                {"text": PROMPT, "request_id": str(uuid.uuid4())},
            )
            for user in users
        )
    )
    elapsed = time.perf_counter() - started
    assert [r.status for r in results] == [200] * STREAMS
    assert all(r.end is not None and r.end["state"] == "completed" for r in results)
    assert all(r.text == FakeModel.answer(PROMPT) for r in results)
    with capsys.disabled():
        print(
            f"\n{STREAMS} concurrent streams of {len(FakeModel.tokens(PROMPT))} tokens "
            f"(pool of 10): all completed in {elapsed:.2f} s"
        )
