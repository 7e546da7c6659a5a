"""Conformance under concurrency: real tasks on their own runners, exactly one winner."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar
from uuid import uuid4

import pytest

from turnstore._compat_async import gather, spawn
from turnstore.errors import DuplicateRequestError, GenerationInProgressError, TurnStoreError
from turnstore.model import CreateTurnParams, Turn, TurnState
from turnstore.rules import ORPHAN_ERROR_CODE
from turnstore.testing.backends import BackendHarness
from turnstore.testing.conformance._support import (
    ALLOW,
    CONCURRENCY,
    HANG_TIMEOUT_SECS,
    STALE_SECS,
    TIMEOUT_SECS,
    Backend,
    Gate,
    complete_params,
    make_params,
    terminal_params,
)

__all__ = [
    "TestConcurrency",
]

T = TypeVar("T")


async def _outcomes(
    calls: Iterable[Callable[[], Awaitable[T]]],
) -> list[T | BaseException]:
    results = await gather([spawn(call) for call in calls], HANG_TIMEOUT_SECS)
    unexpected = [
        r for r in results if isinstance(r, BaseException) and not isinstance(r, TurnStoreError)
    ]
    if unexpected:
        raise unexpected[0]
    return results


@pytest.mark.asyncio
class TestConcurrency:
    async def test_concurrent_finalizers_exactly_one_wins(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        gate = Gate(CONCURRENCY)
        states = [TurnState.COMPLETED, TurnState.FAILED, TurnState.CANCELLED]

        def finalizer(i: int) -> Callable[[], Awaitable[int]]:
            async def run() -> int:
                async with db.store.transaction() as runner:
                    await gate.arrive()
                    if i % 4 == 3:
                        return await db.repo.cas_update_completed(
                            runner, ALLOW, complete_params(turn)
                        )
                    params = terminal_params(turn, states[i % 3])
                    return await db.repo.cas_update_state(runner, ALLOW, params)

            return run

        results = await _outcomes(finalizer(i) for i in range(CONCURRENCY))
        assert (results.count(1), results.count(0)) == (1, CONCURRENCY - 1), results
        assert (await db.reload(turn)).state.is_terminal

    async def test_concurrent_orphan_finalizers_exactly_one_wins(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        await turnstore_backend.advance_time(STALE_SECS)
        gate = Gate(CONCURRENCY)

        async def finalize() -> int:
            async with db.store.transaction() as runner:
                await gate.arrive()
                return await db.repo.cas_finalize_orphan(runner, turn.id, TIMEOUT_SECS)

        results = await _outcomes([finalize] * CONCURRENCY)
        assert (results.count(1), results.count(0)) == (1, CONCURRENCY - 1), results
        assert (await db.reload(turn)).error_code == ORPHAN_ERROR_CODE

    async def test_concurrent_starts_in_one_chat_exactly_one_runs(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        chat_id, tenant_id = uuid4(), uuid4()
        gate = Gate(CONCURRENCY)

        def start(params: CreateTurnParams) -> Callable[[], Awaitable[Turn]]:
            async def run() -> Turn:
                async with db.store.transaction() as runner:
                    await gate.arrive()
                    return await db.repo.create_turn(runner, ALLOW, params)

            return run

        results = await _outcomes(
            start(make_params(chat_id=chat_id, tenant_id=tenant_id)) for _ in range(CONCURRENCY)
        )
        winners = [r for r in results if isinstance(r, Turn)]
        losers = [r for r in results if not isinstance(r, Turn)]
        assert len(winners) == 1
        assert len(losers) == CONCURRENCY - 1
        for loser in losers:
            assert isinstance(loser, GenerationInProgressError), repr(loser)
            assert loser.running_turn_id == winners[0].id
        async with db.store.connection() as runner:
            assert (
                await db.repo.find_running_by_chat_id(runner, ALLOW, tenant_id, chat_id)
                == winners[0]
            )

    async def test_concurrent_starts_of_one_request_exactly_one_inserts(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        chat_id, tenant_id, request_id = uuid4(), uuid4(), uuid4()
        gate = Gate(CONCURRENCY)

        def start(params: CreateTurnParams) -> Callable[[], Awaitable[Turn]]:
            async def run() -> Turn:
                async with db.store.transaction() as runner:
                    await gate.arrive()
                    return await db.repo.create_turn(runner, ALLOW, params)

            return run

        results = await _outcomes(
            start(make_params(chat_id=chat_id, tenant_id=tenant_id, request_id=request_id))
            for _ in range(CONCURRENCY)
        )
        winners = [r for r in results if isinstance(r, Turn)]
        losers = [r for r in results if not isinstance(r, Turn)]
        assert len(winners) == 1
        for loser in losers:
            assert isinstance(loser, DuplicateRequestError), repr(loser)
            assert loser.existing_turn_id == winners[0].id

    async def test_concurrent_keepalives_and_finalizer(
        self, turnstore_backend: BackendHarness
    ) -> None:
        """Keep-alives racing a finalizer never resurrect or break the terminal row."""
        db = Backend(turnstore_backend)
        turn = await db.create()
        gate = Gate(CONCURRENCY)

        def call(i: int) -> Callable[[], Awaitable[int]]:
            async def run() -> int:
                async with db.store.transaction() as runner:
                    await gate.arrive()
                    if i == 0:
                        return await db.repo.cas_update_completed(
                            runner, ALLOW, complete_params(turn)
                        )
                    return await db.repo.update_progress_at(runner, ALLOW, turn.id)

            return run

        results = await _outcomes(call(i) for i in range(CONCURRENCY))
        assert results[0] == 1
        after = await db.reload(turn)
        assert after.state is TurnState.COMPLETED
        assert after.completed_at is not None
