# WARNING: this file is generated from src/turnstore/testing/conformance/_support.py by tools/async_to_sync.py; do not edit.
"""What every capability module shares: the constants, the parameter builders, the
``Backend`` shortcuts over a harness and the small concurrency tools.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

from turnstore._compat_sync import Event, Task, join, wait_event
from turnstore.model import (
    CreateTurnParams,
    Turn,
    TurnState,
)
from turnstore.scope import AccessScope
from turnstore.sync.repository import TurnRepository, TurnStore
from turnstore.sync.testing.backends import BackendHarness
from turnstore.testing.conformance._support import (
    _T,
    ALLOW,
    BLOCK_PROBE_SECS,
    CONCURRENCY,
    HANG_TIMEOUT_SECS,
    SET_INSTANT,
    STALE_SECS,
    TICK,
    TIMEOUT_SECS,
    Planted,
    complete_params,
    make_params,
    ordered_ids,
    preflight_params,
    terminal_params,
    unchanged,
)

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


def bounded(awaitable: _T) -> _T:
    """Await with a generous timeout, so a broken backend fails instead of hanging.

    (In the sync suite the call has run by the time this gets its value: there it is the
    identity, and ``bounded_wait`` / ``bounded_join`` bound what can hang.)"""
    return awaitable


def bounded_wait(event: Event) -> None:
    """Wait for ``event`` with a generous timeout (``TimeoutError`` then)."""
    if not wait_event(event, HANG_TIMEOUT_SECS):
        raise TimeoutError(f"event not set within {HANG_TIMEOUT_SECS} s")


def bounded_join(task: Task[_T]) -> _T:
    """The result of a task started with ``spawn``, waiting with a generous timeout."""
    return join(task, HANG_TIMEOUT_SECS)


class Gate:
    """Releases all parties at once when the last one arrives (``asyncio.Barrier`` is 3.11+)."""

    def __init__(self, parties: int) -> None:
        self._parties = parties
        self._arrived = 0
        self._open = threading.Event()
        self._lock = threading.Lock()

    def arrive(self) -> None:
        with self._lock:
            self._arrived += 1
            if self._arrived == self._parties:
                self._open.set()
        bounded_wait(self._open)


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

    def create(self, params: CreateTurnParams | None = None, **kwargs: Any) -> Turn:
        with self.store.connection() as runner:
            return self.repo.create_turn(runner, ALLOW, params or make_params(**kwargs))

    def reload(self, turn: Turn) -> Turn:
        """The row as stored now (deleted rows included), seen through allow-all."""
        with self.store.connection() as runner:
            found = self.repo.find_by_chat_and_request_id(
                runner, ALLOW, turn.tenant_id, turn.chat_id, turn.request_id
            )
        assert found is not None, f"turn {turn.id} vanished"
        return found

    def finish(self, turn: Turn, state: TurnState = TurnState.COMPLETED) -> Turn:
        with self.store.connection() as runner:
            assert self.repo.cas_update_state(runner, ALLOW, terminal_params(turn, state))
        return self.reload(turn)

    def delete(self, turn: Turn, replaced_by: UUID | None = None) -> Turn:
        with self.store.connection() as runner:
            self.repo.soft_delete(runner, ALLOW, turn.id, replaced_by)
        return self.reload(turn)

    def touch(self, turn: Turn) -> int:
        with self.store.connection() as runner:
            return self.repo.update_progress_at(runner, ALLOW, turn.id)

    def orphans(self, limit: int = 100, timeout: int = TIMEOUT_SECS) -> list[UUID]:
        with self.store.connection() as runner:
            found = self.repo.find_orphan_candidates(runner, timeout, limit)
        return [t.id for t in found]

    def latest(self, tenant_id: UUID, chat_id: UUID, scope: AccessScope = ALLOW) -> Turn | None:
        with self.store.connection() as runner:
            return self.repo.find_latest_turn(runner, scope, tenant_id, chat_id)

    def latest_for_update(
        self, tenant_id: UUID, chat_id: UUID, scope: AccessScope = ALLOW
    ) -> Turn | None:
        with self.store.transaction() as runner:
            return self.repo.find_latest_for_update(runner, scope, tenant_id, chat_id)

    def chat_started_at_once(self, larger_id_first: bool) -> tuple[Turn, Turn]:
        """Two turns of one chat with the same ``started_at`` (a clock stepped back between
        them), the first finished; the larger id is created first or second as asked."""
        low, high = ordered_ids()
        ids = (high, low) if larger_id_first else (low, high)
        chat_id, tenant_id = (uuid4(), uuid4())
        self.harness.set_time(SET_INSTANT)
        first = self.finish(self.create(turn_id=ids[0], chat_id=chat_id, tenant_id=tenant_id))
        self.harness.set_time(SET_INSTANT)
        second = self.create(turn_id=ids[1], chat_id=chat_id, tenant_id=tenant_id)
        assert first.started_at == second.started_at == SET_INSTANT
        return (first, second)

    def chat_of(self, n: int, *, finish: bool = True) -> list[Turn]:
        """``n`` turns of one chat created one after another (all but the last finished)."""
        chat_id, tenant_id = (uuid4(), uuid4())
        turns = []
        for i in range(n):
            turn = self.create(chat_id=chat_id, tenant_id=tenant_id)
            if finish or i < n - 1:
                turn = self.finish(turn)
            turns.append(turn)
        return turns
