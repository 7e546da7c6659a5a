"""A realistic million-turn ``chat_turns`` table, loaded with COPY.

Shape: ``tenants`` tenants, ``chats`` chats spread over them, ``turns`` turns spread over the
chats (about ten a chat, a few chats much longer). Rows are written in ``started_at`` order,
as a live table fills, so one chat's turns lie on many pages. Most turns are completed,
some failed or cancelled, a few percent soft-deleted by a retry (``replaced_by_request_id``
names the retry's request). The latest turn of ``running`` chats runs (one per chat, as the
partial unique index demands); ``stale`` of those stopped making progress long ago, so the
orphan scan has candidates.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from uuid import UUID

import psycopg
from psycopg import sql

__all__ = ["COLUMNS", "Dataset", "DatasetShape", "load"]

COLUMNS = (
    "id",
    "tenant_id",
    "chat_id",
    "request_id",
    "requester_type",
    "requester_user_id",
    "state",
    "provider_name",
    "provider_response_id",
    "assistant_message_id",
    "error_code",
    "error_detail",
    "reserve_tokens",
    "max_output_tokens_applied",
    "reserved_credits_micro",
    "policy_version_applied",
    "effective_model",
    "minimal_generation_floor_applied",
    "web_search_enabled",
    "web_search_completed_count",
    "code_interpreter_completed_count",
    "file_search_completed_count",
    "deleted_at",
    "replaced_by_request_id",
    "started_at",
    "last_progress_at",
    "completed_at",
    "updated_at",
)


@dataclass(frozen=True)
class DatasetShape:
    turns: int = 1_000_000
    chats: int = 100_000
    tenants: int = 100
    running: int = 3_000
    stale: int = 400
    stale_after_s: int = 300
    seed: int = 20240601


@dataclass
class Dataset:
    """What the queries need to pick realistic parameters."""

    shape: DatasetShape
    tenant_ids: list[UUID]
    chat_ids: list[UUID]
    chat_tenant: list[int]
    running_chats: list[int]
    #: (chat index, turn id, request id) of some turns, for point lookups.
    sample_turns: list[tuple[int, UUID, UUID]]
    running_turns: list[tuple[int, UUID, UUID]]


def _chat_sizes(rng: random.Random, shape: DatasetShape) -> list[int]:
    mean = shape.turns / shape.chats
    sizes = [1 + int(rng.expovariate(1 / (mean - 1))) for _ in range(shape.chats)]
    diff = shape.turns - sum(sizes)
    while diff != 0:
        i = rng.randrange(shape.chats)
        if diff > 0:
            sizes[i] += 1
            diff -= 1
        elif sizes[i] > 1:
            sizes[i] -= 1
            diff += 1
    return sizes


def load(dsn: str, schema: str, shape: DatasetShape) -> Dataset:
    """Fill ``schema.chat_turns`` (expected empty) and ANALYZE it."""
    rng = random.Random(shape.seed)
    now = datetime.now(timezone.utc)
    tenant_ids = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(shape.tenants)]
    chat_ids = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(shape.chats)]
    chat_tenant = [rng.randrange(shape.tenants) for _ in range(shape.chats)]
    chat_user = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(shape.chats)]
    sizes = _chat_sizes(rng, shape)
    running_chats = rng.sample(range(shape.chats), shape.running)
    running_set = set(running_chats)
    stale_set = set(running_chats[: shape.stale])

    # Per turn: (started_at offset in seconds before now, chat index, turn index in chat).
    plan: list[tuple[float, int, int]] = []
    for chat, size in enumerate(sizes):
        if chat in running_set:
            end = rng.uniform(0, 90) if chat not in stale_set else rng.uniform(600, 7200)
        else:
            end = rng.uniform(120, 180 * 86400)
        offset = end
        for k in range(size - 1, -1, -1):
            plan.append((offset, chat, k))
            offset += rng.uniform(20, 900)
    plan.sort(key=lambda item: -item[0])

    request_base = rng.getrandbits(128)
    sample_turns: list[tuple[int, UUID, UUID]] = []
    running_turns: list[tuple[int, UUID, UUID]] = []

    def request_id(chat: int, k: int) -> UUID:
        return uuid.UUID(int=(request_base + chat * 65536 + k) % 2**128, version=4)

    copy_sql = sql.SQL("COPY {}.chat_turns ({}) FROM STDIN").format(
        sql.Identifier(schema), sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.cursor() as cur, cur.copy(copy_sql) as copy:
            for offset, chat, k in plan:
                started = now - timedelta(seconds=offset)
                turn_id = uuid.UUID(int=rng.getrandbits(128), version=4)
                req = request_id(chat, k)
                last = k == sizes[chat] - 1
                roll = rng.random()
                deleted_at = replaced_by = None
                error_code = error_detail = message_id = response_id = None
                if last and chat in running_set:
                    state = "running"
                    progress = (
                        started + timedelta(seconds=rng.uniform(0, 30))
                        if chat in stale_set
                        else now - timedelta(seconds=rng.uniform(0, 20))
                    )
                    progress = min(progress, now)
                    completed = None
                    updated = progress
                    running_turns.append((chat, turn_id, req))
                else:
                    completed = started + timedelta(seconds=rng.uniform(2, 90))
                    progress = completed
                    updated = completed
                    if roll < 0.90:
                        state = "completed"
                        message_id = uuid.UUID(int=rng.getrandbits(128), version=4)
                        response_id = f"resp_{rng.getrandbits(64):016x}"
                    elif roll < 0.96:
                        state = "failed"
                        error_code = "orphan_timeout" if roll < 0.93 else "provider_error"
                        error_detail = "upstream returned 502"
                    else:
                        state = "cancelled"
                    if not last and rng.random() < 0.03:
                        deleted_at = completed + timedelta(seconds=rng.uniform(1, 10))
                        replaced_by = request_id(chat, k + 1)
                        updated = deleted_at
                if rng.random() < 0.0005:
                    sample_turns.append((chat, turn_id, req))
                copy.write_row(
                    (
                        turn_id,
                        tenant_ids[chat_tenant[chat]],
                        chat_ids[chat],
                        req,
                        "user",
                        chat_user[chat],
                        state,
                        "openai",
                        response_id,
                        message_id,
                        error_code,
                        error_detail,
                        8192,
                        4096,
                        1500,
                        7,
                        "gpt-4o-mini",
                        256,
                        roll < 0.2,
                        1 if roll < 0.1 else 0,
                        0,
                        0,
                        deleted_at,
                        replaced_by,
                        started,
                        progress,
                        completed,
                        updated,
                    )
                )
        conn.execute(sql.SQL("VACUUM ANALYZE {}.chat_turns").format(sql.Identifier(schema)))
    return Dataset(
        shape=shape,
        tenant_ids=tenant_ids,
        chat_ids=chat_ids,
        chat_tenant=chat_tenant,
        running_chats=running_chats,
        sample_turns=sample_turns,
        running_turns=running_turns,
    )
