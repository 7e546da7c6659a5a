"""What every capability module shares: the constants, the parameter builders, the
``Backend`` shortcuts over a harness and the small concurrency tools.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar
from uuid import UUID, uuid4

from turnstore._compat_async import Event, Task, join, wait_event
from turnstore.model import (
    CasCompleteParams,
    CasTerminalParams,
    CreateTurnParams,
    RequesterType,
    Turn,
    TurnState,
    UpdatePreflightParams,
)
from turnstore.repository import TurnRepository, TurnStore
from turnstore.scope import AccessScope
from turnstore.testing.backends import BackendHarness

__all__ = [
    "ALLOW",
    "BLOCK_PROBE_SECS",
    "CONCURRENCY",
    "HANG_TIMEOUT_SECS",
    "SET_INSTANT",
    "STALE_SECS",
    "TICK",
    "TIMEOUT_SECS",
    "Backend",
    "Gate",
    "Planted",
    "bounded",
    "bounded_join",
    "bounded_wait",
    "complete_params",
    "make_params",
    "ordered_ids",
    "preflight_params",
    "terminal_params",
    "unchanged",
]


#: How many concurrent tasks (each with its own connection) the concurrency tests start.
CONCURRENCY = 8
#: A guard against hangs only: no test waits this long unless the backend is broken.
HANG_TIMEOUT_SECS = 30.0
#: How long a test gives a second locker to (wrongly) get through a held lock. A correct
#: backend never gets through, however long this is; it only bounds a false pass.
BLOCK_PROBE_SECS = 0.5
#: An orphan timeout for the tests, and a span of time comfortably beyond it.
TIMEOUT_SECS = 300
STALE_SECS = 400.0
#: The resolution of ``timestamptz``: the least step between two distinct instants.
TICK = timedelta(microseconds=1)
#: An instant for tests that set the clock (any would do; a fixed one reads well).
SET_INSTANT = datetime(2031, 5, 17, 12, 0, tzinfo=timezone.utc)

ALLOW = AccessScope.allow_all()
_T = TypeVar("_T")


class Planted(Exception):
    """Raised on purpose inside a transaction to make it roll back."""


# --- helpers ---------------------------------------------------------------------------


def ordered_ids(n: int = 2) -> list[UUID]:
    """``n`` fresh ids in ascending order (PostgreSQL's uuid order is the same)."""
    return sorted(uuid4() for _ in range(n))


def make_params(
    *,
    tenant_id: UUID | None = None,
    chat_id: UUID | None = None,
    request_id: UUID | None = None,
    turn_id: UUID | None = None,
    user_id: UUID | None = None,
    **fields: Any,
) -> CreateTurnParams:
    """``CreateTurnParams`` for a user's turn, every id fresh unless given."""
    return CreateTurnParams(
        id=turn_id or uuid4(),
        tenant_id=tenant_id or uuid4(),
        chat_id=chat_id or uuid4(),
        request_id=request_id or uuid4(),
        requester_type=RequesterType.USER,
        requester_user_id=user_id or uuid4(),
        **fields,
    )


def complete_params(turn: Turn, **fields: Any) -> CasCompleteParams:
    return CasCompleteParams(turn_id=turn.id, assistant_message_id=uuid4(), **fields)


def terminal_params(turn: Turn, state: TurnState, **fields: Any) -> CasTerminalParams:
    """A valid CAS to ``state``: an error code for ``failed``, a message for ``completed``."""
    if state is TurnState.FAILED:
        fields.setdefault("error_code", "provider_error")
    if state is TurnState.COMPLETED:
        fields.setdefault("assistant_message_id", uuid4())
    return CasTerminalParams(turn_id=turn.id, state=state, **fields)


def preflight_params(turn: Turn) -> UpdatePreflightParams:
    return UpdatePreflightParams(
        turn_id=turn.id,
        reserve_tokens=4096,
        max_output_tokens_applied=2048,
        reserved_credits_micro=1_500_000,
        policy_version_applied=7,
        effective_model="model-x",
        minimal_generation_floor_applied=64,
    )


async def bounded(awaitable: Awaitable[_T]) -> _T:
    """Await with a generous timeout, so a broken backend fails instead of hanging.

    (In the sync suite the call has run by the time this gets its value: there it is the
    identity, and ``bounded_wait`` / ``bounded_join`` bound what can hang.)"""
    return await asyncio.wait_for(awaitable, HANG_TIMEOUT_SECS)  # sync: return awaitable


async def bounded_wait(event: Event) -> None:
    """Wait for ``event`` with a generous timeout (``TimeoutError`` then)."""
    if not await wait_event(event, HANG_TIMEOUT_SECS):
        raise TimeoutError(f"event not set within {HANG_TIMEOUT_SECS} s")


async def bounded_join(task: Task[_T]) -> _T:
    """The result of a task started with ``spawn``, waiting with a generous timeout."""
    return await join(task, HANG_TIMEOUT_SECS)


class Gate:
    """Releases all parties at once when the last one arrives (``asyncio.Barrier`` is 3.11+)."""

    def __init__(self, parties: int) -> None:
        self._parties = parties
        self._arrived = 0
        self._open = asyncio.Event()
        self._lock = asyncio.Lock()

    async def arrive(self) -> None:
        async with self._lock:
            self._arrived += 1
            if self._arrived == self._parties:
                self._open.set()
        await bounded_wait(self._open)


@dataclass
class Backend:
    """The store under test and shortcuts that run one call on its own autocommit runner."""

    harness: BackendHarness

    @property
    def store(self) -> TurnStore[Any]:
        return self.harness.store

    @property
    def repo(self) -> TurnRepository[Any]:
        return self.harness.store.turns

    async def create(self, params: CreateTurnParams | None = None, **kwargs: Any) -> Turn:
        async with self.store.connection() as runner:
            return await self.repo.create_turn(runner, ALLOW, params or make_params(**kwargs))

    async def reload(self, turn: Turn) -> Turn:
        """The row as stored now (deleted rows included), seen through allow-all."""
        async with self.store.connection() as runner:
            found = await self.repo.find_by_chat_and_request_id(
                runner, ALLOW, turn.tenant_id, turn.chat_id, turn.request_id
            )
        assert found is not None, f"turn {turn.id} vanished"
        return found

    async def finish(self, turn: Turn, state: TurnState = TurnState.COMPLETED) -> Turn:
        async with self.store.connection() as runner:
            assert await self.repo.cas_update_state(runner, ALLOW, terminal_params(turn, state))
        return await self.reload(turn)

    async def delete(self, turn: Turn, replaced_by: UUID | None = None) -> Turn:
        async with self.store.connection() as runner:
            await self.repo.soft_delete(runner, ALLOW, turn.id, replaced_by)
        return await self.reload(turn)

    async def touch(self, turn: Turn) -> int:
        async with self.store.connection() as runner:
            return await self.repo.update_progress_at(runner, ALLOW, turn.id)

    async def orphans(self, limit: int = 100, timeout: int = TIMEOUT_SECS) -> list[UUID]:
        async with self.store.connection() as runner:
            found = await self.repo.find_orphan_candidates(runner, timeout, limit)
        return [t.id for t in found]

    async def latest(
        self, tenant_id: UUID, chat_id: UUID, scope: AccessScope = ALLOW
    ) -> Turn | None:
        async with self.store.connection() as runner:
            return await self.repo.find_latest_turn(runner, scope, tenant_id, chat_id)

    async def latest_for_update(
        self, tenant_id: UUID, chat_id: UUID, scope: AccessScope = ALLOW
    ) -> Turn | None:
        async with self.store.transaction() as runner:
            return await self.repo.find_latest_for_update(runner, scope, tenant_id, chat_id)

    async def chat_started_at_once(self, larger_id_first: bool) -> tuple[Turn, Turn]:
        """Two turns of one chat with the same ``started_at`` (a clock stepped back between
        them), the first finished; the larger id is created first or second as asked."""
        low, high = ordered_ids()
        ids = (high, low) if larger_id_first else (low, high)
        chat_id, tenant_id = uuid4(), uuid4()
        await self.harness.set_time(SET_INSTANT)
        first = await self.finish(
            await self.create(turn_id=ids[0], chat_id=chat_id, tenant_id=tenant_id)
        )
        await self.harness.set_time(SET_INSTANT)
        second = await self.create(turn_id=ids[1], chat_id=chat_id, tenant_id=tenant_id)
        assert first.started_at == second.started_at == SET_INSTANT
        return first, second

    async def chat_of(self, n: int, *, finish: bool = True) -> list[Turn]:
        """``n`` turns of one chat created one after another (all but the last finished)."""
        chat_id, tenant_id = uuid4(), uuid4()
        turns = []
        for i in range(n):
            turn = await self.create(chat_id=chat_id, tenant_id=tenant_id)
            if finish or i < n - 1:
                turn = await self.finish(turn)
            turns.append(turn)
        return turns


def unchanged(before: Turn) -> Callable[[Turn], None]:
    def check(after: Turn) -> None:
        assert after == before, "a call that should change nothing changed the row"

    return check
