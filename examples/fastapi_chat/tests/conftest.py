"""The service under test: uvicorn in a subprocess on 127.0.0.1, on a fresh database.

The PostgreSQL server is the turnstore pytest plugin's (``turnstore_admin_dsn``: an embedded
PostgreSQL, or ``TURNSTORE_TEST_DSN``); each ``database`` is created for the test run and
dropped afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
import pytest_asyncio

from turnstore.embedded import temporary_database

EXAMPLES = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """One uvicorn process serving the app; ``start``, ``kill`` (SIGKILL), ``stop``."""

    def __init__(self, dsn: str, **env: str) -> None:
        self.dsn = dsn
        self.env = env
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        env = {
            **os.environ,
            "TURNSTORE_DSN": self.dsn,
            "FASTAPI_CHAT_ADMIN": "1",
            "FASTAPI_CHAT_TOKEN_DELAY_SECS": "0.01",
            **self.env,
        }
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "fastapi_chat.app:create_app",
                "--app-dir",
                str(EXAMPLES),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            env=env,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("uvicorn did not answer /healthz within 60 s")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture(scope="session")
def database(turnstore_admin_dsn: str) -> Iterator[str]:
    with temporary_database(turnstore_admin_dsn, prefix="fastapi_chat") as dsn:
        yield dsn


@pytest.fixture(scope="session")
def server(database: str) -> Iterator[Server]:
    running = Server(database).start()
    try:
        yield running
    finally:
        running.stop()


@pytest_asyncio.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as http:
        yield http


@dataclass
class User:
    """One user of one tenant, talking in one chat."""

    tenant_id: UUID = field(default_factory=uuid4)
    user_id: UUID = field(default_factory=uuid4)
    chat_id: UUID = field(default_factory=uuid4)

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Tenant-Id": str(self.tenant_id), "X-User-Id": str(self.user_id)}

    def path(self, suffix: str = "messages") -> str:
        return f"/chats/{self.chat_id}/{suffix}"


@dataclass
class Streamed:
    """An SSE response read to its end (or as far as it went)."""

    status: int
    turn: dict[str, Any] = field(default_factory=dict)
    tokens: list[str] = field(default_factory=list)
    end: dict[str, Any] | None = None
    body: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def add(self, event: str, data: dict[str, Any]) -> None:
        if event == "turn":
            self.turn = data
        elif event == "token":
            self.tokens.append(data["text"])
        elif event == "end":
            self.end = data


async def read_events(response: httpx.Response, streamed: Streamed) -> AsyncIterator[str]:
    """Fill ``streamed`` from the SSE body, yielding each event's name as it arrives."""
    event = ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            streamed.add(event, json.loads(line[len("data: ") :]))
            yield event


async def stream(
    http: httpx.AsyncClient, method: str, url: str, user: User, body: Any = None
) -> Streamed:
    """Send a request and read its SSE answer to the end (or its JSON error)."""
    async with http.stream(method, url, json=body, headers=user.headers) as response:
        streamed = Streamed(response.status_code)
        if response.status_code != 200:
            await response.aread()
            streamed.body = response.json()
            return streamed
        async for _ in read_events(response, streamed):
            pass
        return streamed
