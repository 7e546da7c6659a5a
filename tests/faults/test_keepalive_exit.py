"""Leaving ``keep_alive`` returns promptly even when the heartbeat is waiting for a pooled
connection at the moment it is stopped."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import pytest

from faults.conftest import FaultDatabase
from faults.workload import TurnChat
from turnstore.lifecycle import KeepAliveSettings, TurnLifecycle
from turnstore.postgres import PostgresStore

pytestmark = pytest.mark.faults

POOL_SIZE = 2
TURNS = 40
ROUNDS = 3
ROUND_SECS = 20.0
SETTINGS = KeepAliveSettings(interval_secs=0.01)
#: Leaving one keep-alive block must take less than this.
EXIT_BOUND_SECS = 2.0


async def _cancel_leftover_heartbeats() -> int:
    """Cancel keep-alive tasks a hung exit left running (bounded); how many there were."""
    leftovers = [
        t
        for t in asyncio.all_tasks()
        if t.get_name().startswith("turnstore-keep-alive-") and not t.done()
    ]
    for _ in range(100):
        alive = [t for t in leftovers if not t.done()]
        if not alive:
            break
        for task in alive:
            task.cancel()
        await asyncio.wait(alive, timeout=0.1)
    return len(leftovers)


@pytest.mark.parametrize("batched", [True, False], ids=["hub", "per-turn"])
async def test_forty_keep_alives_on_a_pool_of_two_all_exit(
    fault_db: FaultDatabase, batched: bool
) -> None:
    settings = SETTINGS.model_copy(update={"batched": batched})
    store = await PostgresStore.open(fault_db.dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
    async with store:
        lifecycle = TurnLifecycle(store)
        rng = random.Random(1234)

        exits: list[float] = []

        async def stream(chat: TurnChat) -> None:
            outcome = await lifecycle.begin_turn(chat.scope, chat.params())
            assert outcome.turn is not None
            async with lifecycle.keep_alive(chat.scope, outcome.turn.id, settings=settings):
                await asyncio.sleep(rng.uniform(0.0, 0.2))
                leaving = time.monotonic()
            exits.append(time.monotonic() - leaving)

        hung = 0
        try:
            for round_no in range(ROUNDS):
                try:
                    await asyncio.wait_for(
                        asyncio.gather(*(stream(TurnChat()) for _ in range(TURNS))),
                        timeout=ROUND_SECS,
                    )
                except asyncio.TimeoutError:
                    hung = round_no + 1
                    break
        finally:
            leftovers = await _cancel_leftover_heartbeats()
        assert not hung, (
            f"round {hung}: {TURNS} keep-alives did not all exit within {ROUND_SECS} s "
            f"({leftovers} heartbeats still running)"
        )
        assert len(exits) == ROUNDS * TURNS
        assert max(exits) < EXIT_BOUND_SECS, f"slowest exit {max(exits):.3f} s"
        print(f"\nkeep-alive exits: {len(exits)}, slowest {max(exits) * 1000:.1f} ms")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(store.check_schema(), timeout=10)
