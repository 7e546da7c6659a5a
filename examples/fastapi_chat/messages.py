"""The service's own table: the chat's messages, next to turnstore's ``chat_turns``.

The user's message is written in the transaction that starts its turn; the assistant's in
the transaction that completes it, so a completed turn always has its answer, and a turn
that did not complete has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import class_row

__all__ = ["Message", "create_table", "insert", "list_chat", "mark_deleted", "text_of", "user_text"]

Connection = psycopg.AsyncConnection[Any]

_DDL = """
CREATE TABLE IF NOT EXISTS messages (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    chat_id     uuid NOT NULL,
    turn_id     uuid NOT NULL,
    role        text NOT NULL CHECK (role IN ('user', 'assistant')),
    content     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    deleted_at  timestamptz
);
CREATE INDEX IF NOT EXISTS messages_by_chat ON messages (tenant_id, chat_id, created_at);
CREATE INDEX IF NOT EXISTS messages_by_turn ON messages (turn_id);
"""


@dataclass(frozen=True)
class Message:
    id: UUID
    turn_id: UUID
    role: str
    content: str
    created_at: datetime


async def create_table(conn: Connection) -> None:
    """Create the table once, even when several instances start at the same time."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('fastapi_chat.messages'))")
        await conn.execute(_DDL)


async def insert(
    conn: Connection,
    *,
    id: UUID,
    tenant_id: UUID,
    chat_id: UUID,
    turn_id: UUID,
    role: str,
    content: str,
) -> None:
    await conn.execute(
        "INSERT INTO messages (id, tenant_id, chat_id, turn_id, role, content)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (id, tenant_id, chat_id, turn_id, role, content),
    )


async def text_of(conn: Connection, tenant_id: UUID, message_id: UUID) -> str | None:
    cur = await conn.execute(
        "SELECT content FROM messages WHERE tenant_id = %s AND id = %s", (tenant_id, message_id)
    )
    row = await cur.fetchone()
    return None if row is None else str(row[0])


async def user_text(conn: Connection, tenant_id: UUID, turn_id: UUID) -> str | None:
    cur = await conn.execute(
        "SELECT content FROM messages WHERE tenant_id = %s AND turn_id = %s AND role = 'user'",
        (tenant_id, turn_id),
    )
    row = await cur.fetchone()
    return None if row is None else str(row[0])


async def mark_deleted(conn: Connection, tenant_id: UUID, turn_id: UUID) -> None:
    await conn.execute(
        "UPDATE messages SET deleted_at = clock_timestamp()"
        " WHERE tenant_id = %s AND turn_id = %s AND deleted_at IS NULL",
        (tenant_id, turn_id),
    )


async def list_chat(conn: Connection, tenant_id: UUID, chat_id: UUID) -> list[Message]:
    async with conn.cursor(row_factory=class_row(Message)) as cur:
        await cur.execute(
            "SELECT id, turn_id, role, content, created_at FROM messages"
            " WHERE tenant_id = %s AND chat_id = %s AND deleted_at IS NULL"
            " ORDER BY created_at, id",
            (tenant_id, chat_id),
        )
        return await cur.fetchall()
