"""Helpers shared by the lifecycle and watchdog tests.

``StoreTap`` wraps a real store (PostgreSQL or the fake) and lets a test count repository
calls and run a real write at an exact point between two of them (for instance between the
watchdog's scan and its CAS), so races are made deterministic without mocking anything.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, cast
from uuid import UUID

from turnstore.election import LeaderElection
from turnstore.model import CreateTurnParams, RequesterType, Turn
from turnstore.repository import TurnRepository, TurnStore
from turnstore.scope import AccessScope
from turnstore.testing.backends import BackendHarness

Action = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Chat:
    """One chat of one user in one tenant."""

    tenant_id: UUID = field(default_factory=uuid.uuid4)
    chat_id: UUID = field(default_factory=uuid.uuid4)
    user_id: UUID = field(default_factory=uuid.uuid4)

    @property
    def scope(self) -> AccessScope:
        return AccessScope.for_tenant(self.tenant_id)

    def params(
        self, request_id: UUID | None = None, *, turn_id: UUID | None = None
    ) -> CreateTurnParams:
        return CreateTurnParams(
            id=turn_id or uuid.uuid4(),
            tenant_id=self.tenant_id,
            chat_id=self.chat_id,
            request_id=request_id or uuid.uuid4(),
            requester_type=RequesterType.USER,
            requester_user_id=self.user_id,
        )


class HookRecorder:
    """A finalize or settlement hook that records the rows it is given."""

    def __init__(self) -> None:
        self.rows: list[Turn] = []

    async def __call__(self, runner: Any, row: Turn) -> None:
        self.rows.append(row)


class RepositoryTap:
    """A real repository that counts calls and runs one-shot actions around them.

    ``before[name]`` runs before the next call of ``name``; ``after[name]`` after it
    returns; ``on_error[name]`` after it raises (the error is then re-raised).
    """

    def __init__(self, inner: TurnRepository[Any]) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.before: dict[str, Action] = {}
        self.after: dict[str, Action] = {}
        self.on_error: dict[str, Action] = {}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            if (action := self.before.pop(name, None)) is not None:
                await action()
            try:
                result = await method(*args, **kwargs)
            except Exception:
                if (action := self.on_error.pop(name, None)) is not None:
                    await action()
                raise
            if (action := self.after.pop(name, None)) is not None:
                await action()
            return result

        return call


class StoreTap:
    """A real store whose repository is a ``RepositoryTap``; everything else delegates."""

    def __init__(self, inner: TurnStore[Any]) -> None:
        self.inner = inner
        self.tap = RepositoryTap(inner.turns)

    @property
    def turns(self) -> TurnRepository[Any]:
        return cast(TurnRepository[Any], self.tap)

    def transaction(self) -> AbstractAsyncContextManager[Any]:
        return self.inner.transaction()

    def connection(self) -> AbstractAsyncContextManager[Any]:
        return self.inner.connection()

    async def migrate(self) -> None:
        await self.inner.migrate()

    def leader_election(self) -> LeaderElection:
        return self.inner.leader_election()

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def tapped(backend: BackendHarness) -> tuple[TurnStore[Any], RepositoryTap]:
    """The backend's store behind a tap, typed as a store, and the tap."""
    store = StoreTap(backend.store)
    return cast(TurnStore[Any], store), store.tap


async def wait_until_blocked(backend: BackendHarness, task: asyncio.Task[Any]) -> None:
    """Return once ``task`` waits for a lock; fail if it finished instead.

    On PostgreSQL the wait is visible in ``pg_stat_activity``; the fake's wait is an
    asyncio primitive, so letting the loop run a while is enough for the task to reach it.
    """
    if backend.name == "postgres":
        query = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        for _ in range(2000):
            async with backend.store.connection() as conn:
                cur = await conn.execute(query)
                row = await cur.fetchone()
            if (row is not None and row[0] > 0) or task.done():
                break
            await asyncio.sleep(0.005)
    else:
        for _ in range(200):
            await asyncio.sleep(0)
    assert not task.done(), "the second transaction should wait for the first one's lock"
