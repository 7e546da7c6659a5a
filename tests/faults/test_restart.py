"""A pooled store across a PostgreSQL restart or crash: once the server accepts again,
calls succeed; a pooled connection the restart killed must not fail a caller."""

from __future__ import annotations

import asyncio

import pytest

from faults.cluster import PgCluster
from faults.conftest import FaultDatabase
from faults.workload import TurnChat
from turnstore.lifecycle import TurnLifecycle
from turnstore.postgres import PostgresStore

pytestmark = pytest.mark.faults

POOL_SIZE = 10
CALLS = 20
CALL_SECS = 30.0


@pytest.mark.parametrize("outage", ["restart", "crash"])
async def test_calls_after_the_server_is_back_all_succeed(
    pg_cluster: PgCluster, fault_db: FaultDatabase, outage: str
) -> None:
    store = await PostgresStore.open(fault_db.dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
    async with store:
        lifecycle = TurnLifecycle(store)
        # Every pooled connection has served a call before the outage.
        first = TurnChat()
        started = await asyncio.wait_for(
            lifecycle.begin_turn(first.scope, first.params()), timeout=CALL_SECS
        )
        assert started.started
        await asyncio.wait_for(
            asyncio.gather(*(store.check_schema() for _ in range(POOL_SIZE))), timeout=CALL_SECS
        )
        if outage == "restart":
            await asyncio.to_thread(pg_cluster.restart, "fast")
        else:
            await asyncio.to_thread(pg_cluster.kill)
            await asyncio.to_thread(pg_cluster.start)

        failures: list[str] = []
        took: list[float] = []
        loop = asyncio.get_running_loop()
        for _ in range(CALLS):
            chat = TurnChat()
            began = loop.time()
            try:
                outcome = await asyncio.wait_for(
                    lifecycle.begin_turn(chat.scope, chat.params()), timeout=CALL_SECS
                )
                assert outcome.started, outcome
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}"[:200])
            took.append(loop.time() - began)
        # A figure for docs/reliability.md (pytest -s shows it), never asserted.
        print(
            f"\n{outage}: {CALLS - len(failures)} of {CALLS} calls succeeded; first call "
            f"{took[0] * 1000:.0f} ms, slowest {max(took) * 1000:.0f} ms"
        )
        assert not failures, (
            f"{len(failures)} of {CALLS} calls failed, first: {failures[0]}, last: {failures[-1]}"
        )
