"""Every repository query on its index at a million turns (issue 5, item 4).

Loads ``--turns`` turns (default 1,000,000) over ``--chats`` chats and ``--tenants`` tenants
with COPY into a fresh, migrated database, runs ANALYZE, then calls each repository
method (``list_turns`` three ways: first page, next page, deleted turns included) with
realistic parameters while ``auto_explain`` sends back the analyzed plan of every statement
the call executes. Writes change nothing: each call runs in a
transaction that is rolled back. Reports each method's server time and plan shape, and
FAIL (exit status 1) when any plan scans ``chat_turns`` sequentially or the orphan scan does
not return its 100 candidates within 5 ms of server time.

With ``--partitions N`` the database is migrated with the partitioned layout
(docs/schema.md, *The partitioned layout*): each method's row also says how many
partitions its statements touched (the partitions named in the analyzed plans: a pruned
partition is not in them), and a method called with a single-tenant scope that touches
more than one partition of ``chat_turns`` or ``chat_heads`` is a FAIL, as is a sequential
scan of any partition.

    python -m benchmarks.scale [--dsn postgresql://...] [--turns 1000000] [--partitions 16]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from benchmarks._dataset import Dataset, DatasetShape, load
from benchmarks._plans import PlanCapture, StatementPlan, enable_auto_explain, walk
from benchmarks._support import (
    add_server_arguments,
    benchmark_database,
    machine_info,
    write_results,
)
from turnstore import (
    AccessScope,
    CasCompleteParams,
    CasTerminalParams,
    CreateTurnParams,
    RequesterType,
    ToolCallType,
    TurnState,
    UpdatePreflightParams,
)
from turnstore.postgres import PostgresStore

SCHEMA = "turnstore"
ORPHAN_TIMEOUT_S = 300
ORPHAN_LIMIT = 100
ORPHAN_BUDGET_MS = 5.0
#: Calls per method: enough for psycopg to prepare the statements and for the server to
#: consider a generic plan, so the plans seen are the ones a busy application gets.
CALLS = 12
#: A page of history, and one retention batch (of turns ended at least a minute ago).
LIST_LIMIT = 50
PURGE_BATCH = 1000
PURGE_AGE_S = 60

Conn = psycopg.AsyncConnection[Any]
Call = Callable[[Conn, int], Awaitable[object]]


class _Rollback(Exception):
    """Raised to roll a measured write back."""


def method_calls(data: Dataset, repo: Any) -> dict[str, tuple[bool, Call]]:
    """For each repository method: (writes?, a call with realistic parameters for round i)."""
    rng = random.Random(7)

    def tenant_of(chat: int) -> uuid.UUID:
        return data.tenant_ids[data.chat_tenant[chat]]

    def tenant_scope(chat: int) -> AccessScope:
        return AccessScope.for_tenant(tenant_of(chat))

    def sample(i: int) -> tuple[int, uuid.UUID, uuid.UUID]:
        return data.sample_turns[i % len(data.sample_turns)]

    def running(i: int) -> tuple[int, uuid.UUID, uuid.UUID]:
        # Skip the stale ones (the first ``stale`` running chats): those serve the orphan scan.
        live = data.running_turns
        return live[(i * 37) % len(live)]

    def stale_turn(i: int) -> tuple[int, uuid.UUID]:
        stale = set(data.running_chats[: data.shape.stale])
        turns = [t for t in data.running_turns if t[0] in stale]
        chat, turn_id, _ = turns[i % len(turns)]
        return chat, turn_id

    idle_chats = [c for c in range(len(data.chat_ids)) if c not in set(data.running_chats)]

    async def create_turn(conn: Conn, i: int) -> object:
        chat = idle_chats[rng.randrange(len(idle_chats))]
        params = CreateTurnParams(
            id=uuid.uuid4(),
            tenant_id=data.tenant_ids[data.chat_tenant[chat]],
            chat_id=data.chat_ids[chat],
            request_id=uuid.uuid4(),
            requester_type=RequesterType.USER,
            requester_user_id=uuid.uuid4(),
        )
        return await repo.create_turn(conn, tenant_scope(chat), params)

    async def find_by_chat_and_request_id(conn: Conn, i: int) -> object:
        chat, _, req = sample(i)
        return await repo.find_by_chat_and_request_id(
            conn, tenant_scope(chat), tenant_of(chat), data.chat_ids[chat], req
        )

    async def find_running_by_chat_id(conn: Conn, i: int) -> object:
        chat = running(i)[0]
        return await repo.find_running_by_chat_id(
            conn, tenant_scope(chat), tenant_of(chat), data.chat_ids[chat]
        )

    async def cas_update_state(conn: Conn, i: int) -> object:
        chat, turn_id, _ = running(i)
        params = CasTerminalParams(
            turn_id=turn_id, state=TurnState.FAILED, error_code="provider_error"
        )
        return await repo.cas_update_state(conn, tenant_scope(chat), params)

    async def cas_update_completed(conn: Conn, i: int) -> object:
        chat, turn_id, _ = running(i)
        params = CasCompleteParams(turn_id=turn_id, assistant_message_id=uuid.uuid4())
        return await repo.cas_update_completed(conn, tenant_scope(chat), params)

    async def set_assistant_message_id(conn: Conn, i: int) -> object:
        chat, turn_id, _ = sample(i)
        return await repo.set_assistant_message_id(conn, tenant_scope(chat), turn_id, uuid.uuid4())

    async def soft_delete(conn: Conn, i: int) -> object:
        chat, turn_id, _ = sample(i)
        return await repo.soft_delete(conn, tenant_scope(chat), turn_id, uuid.uuid4())

    async def find_latest_turn(conn: Conn, i: int) -> object:
        chat = rng.randrange(len(data.chat_ids))
        return await repo.find_latest_turn(
            conn, tenant_scope(chat), tenant_of(chat), data.chat_ids[chat]
        )

    async def update_progress_at(conn: Conn, i: int) -> object:
        chat, turn_id, _ = running(i)
        return await repo.update_progress_at(conn, tenant_scope(chat), turn_id)

    async def find_orphan_candidates(conn: Conn, i: int) -> object:
        return await repo.find_orphan_candidates(conn, ORPHAN_TIMEOUT_S, ORPHAN_LIMIT)

    async def cas_finalize_orphan(conn: Conn, i: int) -> object:
        # As the watchdog calls it: with the candidate's tenant.
        chat, turn_id = stale_turn(i)
        return await repo.cas_finalize_orphan(
            conn, turn_id, ORPHAN_TIMEOUT_S, tenant_id=tenant_of(chat)
        )

    async def find_latest_for_update(conn: Conn, i: int) -> object:
        chat = rng.randrange(len(data.chat_ids))
        return await repo.find_latest_for_update(
            conn, tenant_scope(chat), tenant_of(chat), data.chat_ids[chat]
        )

    async def update_preflight_fields(conn: Conn, i: int) -> object:
        chat, turn_id, _ = running(i)
        params = UpdatePreflightParams(
            turn_id=turn_id,
            reserve_tokens=8192,
            max_output_tokens_applied=4096,
            reserved_credits_micro=1200,
            policy_version_applied=8,
            effective_model="gpt-4o",
            minimal_generation_floor_applied=128,
        )
        return await repo.update_preflight_fields(conn, tenant_scope(chat), params)

    async def increment_tool_calls(conn: Conn, i: int) -> object:
        chat, turn_id, _ = running(i)
        return await repo.increment_tool_calls(
            conn, tenant_scope(chat), turn_id, ToolCallType.WEB_SEARCH
        )

    async def get_turn(conn: Conn, i: int) -> object:
        chat, turn_id, _ = sample(i)
        return await repo.get_turn(conn, tenant_scope(chat), turn_id)

    def chat_key(i: int) -> tuple[AccessScope, uuid.UUID, uuid.UUID]:
        chat = sample(i)[0]
        tenant_id = data.tenant_ids[data.chat_tenant[chat]]
        return tenant_scope(chat), tenant_id, data.chat_ids[chat]

    async def list_turns(conn: Conn, i: int) -> object:
        scope, tenant_id, chat_id = chat_key(i)
        page = await repo.list_turns(conn, scope, tenant_id, chat_id, limit=LIST_LIMIT)
        return page.turns

    async def list_turns_next_page(conn: Conn, i: int) -> object:
        scope, tenant_id, chat_id = chat_key(i)
        first = await repo.list_turns(conn, scope, tenant_id, chat_id, limit=2)
        page = await repo.list_turns(
            conn, scope, tenant_id, chat_id, limit=LIST_LIMIT, before=first.next_cursor
        )
        return page.turns

    async def list_turns_include_deleted(conn: Conn, i: int) -> object:
        scope, tenant_id, chat_id = chat_key(i)
        page = await repo.list_turns(
            conn, scope, tenant_id, chat_id, limit=LIST_LIMIT, include_deleted=True
        )
        return page.turns

    async def purge_turns(conn: Conn, i: int) -> object:
        return await repo.purge_turns(conn, PURGE_AGE_S, PURGE_BATCH)

    return {
        "create_turn": (True, create_turn),
        "find_by_chat_and_request_id": (False, find_by_chat_and_request_id),
        "find_running_by_chat_id": (False, find_running_by_chat_id),
        "cas_update_state": (True, cas_update_state),
        "cas_update_completed": (True, cas_update_completed),
        "set_assistant_message_id": (True, set_assistant_message_id),
        "soft_delete": (True, soft_delete),
        "find_latest_turn": (False, find_latest_turn),
        "update_progress_at": (True, update_progress_at),
        "find_orphan_candidates": (False, find_orphan_candidates),
        "cas_finalize_orphan": (True, cas_finalize_orphan),
        "find_latest_for_update": (True, find_latest_for_update),
        "update_preflight_fields": (True, update_preflight_fields),
        "increment_tool_calls": (True, increment_tool_calls),
        "get_turn": (False, get_turn),
        "list_turns": (False, list_turns),
        "list_turns (next page)": (False, list_turns_next_page),
        "list_turns (include_deleted)": (False, list_turns_include_deleted),
        "purge_turns": (True, purge_turns),
    }


#: The methods that may touch every partition: the two called without a tenant, and
#: create_turn, whose insert checks that no tenant uses the new turn id (one primary-key
#: probe per partition; docs/schema.md, The partitioned layout): its write touches one.
UNSCOPED = frozenset({"find_orphan_candidates", "purge_turns", "create_turn"})
_PARTITION = re.compile(r"^(chat_turns|chat_heads)_p[0-9]+$")
_TURNS = re.compile(r"^chat_turns(_p[0-9]+)?$")


def partitions_touched(plans: list[StatementPlan]) -> dict[str, int]:
    """Per partitioned table, the partitions the plans of one call read or wrote."""
    seen: dict[str, set[str]] = {}
    for plan in plans:
        for node in walk(plan.plan):
            name = node.get("Relation Name") or ""
            if _PARTITION.match(name):
                seen.setdefault(name.rsplit("_p", 1)[0], set()).add(name)
    return {table: len(names) for table, names in sorted(seen.items())}


def turns_seq_scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Sequential scans of chat_turns or of one of its partitions."""
    return [
        node
        for node in walk(plan)
        if node.get("Node Type") == "Seq Scan" and _TURNS.match(node.get("Relation Name") or "")
    ]


def _plan_summary(plan: dict[str, Any]) -> str:
    """A one-line shape of a plan: node types with their index or relation."""
    parts = []
    for node in walk(plan):
        label = node["Node Type"]
        target = node.get("Index Name") or node.get("Relation Name")
        if target:
            label += f"({target})"
        parts.append(label)
    return " > ".join(parts)


async def measure(store: PostgresStore, data: Dataset) -> dict[str, Any]:
    """Call every method ``CALLS`` times and collect its plans and server times."""
    capture = PlanCapture()
    results: dict[str, Any] = {}
    async with store.connection() as conn:
        await enable_auto_explain(conn, capture)
        for name, (writes, call) in method_calls(data, store.turns).items():
            per_call: list[list[StatementPlan]] = []
            wall: list[float] = []
            outcome: object = None
            for i in range(CALLS):
                capture.take()
                start = time.perf_counter()
                if writes:
                    try:
                        async with conn.transaction():
                            outcome = await call(conn, i)
                            raise _Rollback
                    except _Rollback:
                        pass
                else:
                    outcome = await call(conn, i)
                wall.append(time.perf_counter() - start)
                per_call.append([p for p in capture.take() if not _is_bookkeeping(p)])
            server_ms = [sum(p.duration_ms for p in plans) for plans in per_call]
            seq = [p.query for plans in per_call for p in plans if turns_seq_scans(p.plan)]
            last = per_call[-1]
            results[name] = {
                "statements": len(last),
                "server_ms_median": statistics.median(server_ms),
                "server_ms_max": max(server_ms),
                "client_ms_median": statistics.median(wall) * 1e3,
                "seq_scan_on_chat_turns": sorted(set(seq)),
                "plans": [_plan_summary(p.plan) for p in last],
                "partitions_touched": partitions_touched(last),
                "shared_hit_blocks": sum(int(p.plan.get("Shared Hit Blocks", 0)) for p in last),
                "shared_read_blocks": sum(int(p.plan.get("Shared Read Blocks", 0)) for p in last),
                "queries": [p.query for p in last],
                "last_plan": [p.plan for p in last],
                "result_size": len(outcome) if isinstance(outcome, list) else None,
            }
    return results


def _is_bookkeeping(plan: StatementPlan) -> bool:
    """Statements the measurement itself issues (transaction control has no plan anyway)."""
    return plan.query.lstrip().upper().startswith(("SET ", "LOAD "))


def verdicts(results: dict[str, Any]) -> list[str]:
    """Every failed expectation, as a sentence."""
    failures = []
    for name, res in results.items():
        if res["seq_scan_on_chat_turns"]:
            failures.append(f"{name}: sequential scan of chat_turns")
        touched = res["partitions_touched"]
        if name not in UNSCOPED and any(n > 1 for n in touched.values()):
            failures.append(f"{name}: a single-tenant call touched partitions {touched}")
    orphan = results["find_orphan_candidates"]
    if orphan["result_size"] != ORPHAN_LIMIT:
        failures.append(
            f"find_orphan_candidates returned {orphan['result_size']} turns, not {ORPHAN_LIMIT}"
        )
    if orphan["server_ms_median"] >= ORPHAN_BUDGET_MS:
        failures.append(
            f"find_orphan_candidates took {orphan['server_ms_median']:.2f} ms of server time "
            f"(budget {ORPHAN_BUDGET_MS} ms)"
        )
    return failures


def print_table(results: dict[str, Any]) -> None:
    print(
        f"{'method':30} {'stmts':>5} {'server ms':>10} {'max ms':>8} {'client ms':>10} "
        f"{'parts':>5}  plan"
    )
    for name, res in results.items():
        flag = "  SEQ SCAN!" if res["seq_scan_on_chat_turns"] else ""
        parts = max(res["partitions_touched"].values(), default=0)
        print(
            f"{name:30} {res['statements']:>5} {res['server_ms_median']:>10.3f} "
            f"{res['server_ms_max']:>8.3f} {res['client_ms_median']:>10.3f} {parts:>5}  "
            f"{' | '.join(res['plans'])}{flag}"
        )


async def run(
    dsn: str, shape: DatasetShape, partitions: int = 0
) -> tuple[Dataset, dict[str, Any], float]:
    store = await PostgresStore.open(dsn, schema=SCHEMA, min_size=1, max_size=1)
    try:
        await store.migrate(partitions=partitions)
        started = time.perf_counter()
        data = await asyncio.to_thread(load, dsn, SCHEMA, shape)
        load_s = time.perf_counter() - started
        return data, await measure(store, data), load_s
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_arguments(parser)
    parser.add_argument("--turns", type=int, default=1_000_000)
    parser.add_argument("--chats", type=int, default=None, help="default: turns / 10")
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="100,000 turns: a smoke run")
    parser.add_argument(
        "--partitions", type=int, default=0, help="the partitioned layout (default: plain)"
    )
    args = parser.parse_args(argv)
    turns = 100_000 if args.quick else args.turns
    chats = args.chats or max(1, turns // 10)
    shape = DatasetShape(
        turns=turns,
        chats=chats,
        tenants=args.tenants,
        running=max(200, min(3_000, chats // 30)),
        stale=max(ORPHAN_LIMIT + 50, min(400, chats // 250)),
    )
    with benchmark_database(args, "turnstore_scale") as (admin_dsn, dsn):
        machine = machine_info(admin_dsn)
        print(
            f"loading {shape.turns:,} turns, {shape.chats:,} chats, {shape.tenants} tenants, "
            f"{shape.running:,} running ({shape.stale} stale) ...",
            flush=True,
        )
        data, results, load_s = asyncio.run(run(dsn, shape, args.partitions))
        print(f"loaded and analyzed in {load_s:.1f} s")
    print_table(results)
    failures = verdicts(results)
    orphan = results["find_orphan_candidates"]
    print(
        f"orphan scan: {orphan['result_size']} candidates in "
        f"{orphan['server_ms_median']:.3f} ms server time (budget {ORPHAN_BUDGET_MS} ms)"
    )
    path = write_results(
        f"scale-partitioned-{args.partitions}" if args.partitions else "scale",
        {
            "machine": machine,
            "shape": vars(shape),
            "partitions": args.partitions,
            "load_seconds": load_s,
            "results": results,
            "failures": failures,
        },
    )
    for failure in failures:
        print(f"FAIL {failure}")
    print("PASS" if not failures else "FAIL", f"(results: {path})")
    del data
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
