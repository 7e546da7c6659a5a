"""Finalize notifications on PostgreSQL: what the finalizing statements send, the listener's
reconnect and re-check, and the polling fallback (docs/lifecycle.md, *Cancel*)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psycopg
import pytest

from lifecycle_support import Chat
from turnstore.errors import InvalidParameterError
from turnstore.lifecycle import TurnLifecycle
from turnstore.model import Turn
from turnstore.postgres import PostgresStore
from turnstore.postgres.notify import PostgresFinalizeSignals
from turnstore.postgres.statements import finalize_channel
from turnstore.scope import AccessScope

PROMPT_SECS = 2.0


async def started(store: PostgresStore, chat: Chat) -> Turn:
    outcome = await TurnLifecycle(store).begin_turn(chat.scope, chat.params())
    assert outcome.turn is not None
    return outcome.turn


async def listener(dsn: str, channel: str) -> psycopg.AsyncConnection[Any]:
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    await conn.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel)))
    return conn


async def notes(conn: psycopg.AsyncConnection[Any], secs: float) -> list[str]:
    """The payloads ``conn`` receives within ``secs``."""
    return [note.payload async for note in conn.notifies(timeout=secs)]


async def until(predicate: Any, secs: float = 5.0) -> None:
    deadline = time.monotonic() + secs
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_channel_is_an_identifier_within_63_bytes_per_schema() -> None:
    long_schema = "s" * 63
    channels = {finalize_channel(name) for name in ("turnstore", "other", long_schema, "a%b")}
    assert len(channels) == 4
    assert all(len(c.encode()) <= 63 and c.isascii() and c == c.lower() for c in channels)


async def test_a_winning_finalize_notifies_its_turn_id_at_commit_only(
    turnstore_postgres_store: PostgresStore, turnstore_pg_dsn: str
) -> None:
    store = turnstore_postgres_store
    lc = TurnLifecycle(store)
    chat = Chat()
    turn = await started(store, chat)
    conn = await listener(turnstore_pg_dsn, finalize_channel(store.schema))
    try:
        async with store.transaction() as txn:
            assert (await lc.cancel_turn(chat.scope, turn, runner=txn)).won
            assert await notes(conn, 0.3) == []  # not before the commit
        assert await notes(conn, 1.0) == [str(turn.id)]
        # Losing CASes (the turn is over) send nothing.
        assert not (await lc.cancel_turn(chat.scope, turn)).won
        assert not (await lc.complete_turn(chat.scope, turn, uuid.uuid4())).won
        assert not (await lc.fail_turn(chat.scope, turn, "x")).won
        assert await notes(conn, 0.3) == []
        # A completion notifies too.
        second = await started(store, chat)
        assert (await lc.complete_turn(chat.scope, second, uuid.uuid4())).won
        assert await notes(conn, 1.0) == [str(second.id)]
    finally:
        await conn.close()


async def test_listener_reconnects_after_termination_and_rechecks(
    turnstore_postgres_store: PostgresStore, turnstore_pg_dsn: str
) -> None:
    store = turnstore_postgres_store
    lc = TurnLifecycle(store)
    chat = Chat()
    turn = await started(store, chat)
    gate = asyncio.Event()
    gate.set()

    async def connect() -> psycopg.AsyncConnection[Any]:
        await gate.wait()
        return await psycopg.AsyncConnection.connect(turnstore_pg_dsn, autocommit=True)

    async def still_running(ids: list[uuid.UUID]) -> set[uuid.UUID]:
        async with store.connection() as conn:
            cur = await conn.execute(
                psycopg.sql.SQL(
                    "SELECT id FROM {} WHERE id = ANY(%s) AND state = 'running'"
                ).format(psycopg.sql.Identifier(store.schema, "chat_turns")),
                (ids,),
            )
            return {row[0] for row in await cur.fetchall()}

    # A poll so rare that only the re-check on reconnect can tell the waiter in time.
    signals = PostgresFinalizeSignals(
        finalize_channel(store.schema), still_running, connect, poll_secs=3600
    )
    event = asyncio.Event()
    signals.watch(turn.id, event)
    try:
        await until(lambda: signals.listening)
        pid = signals.listener_pid
        assert pid is not None
        gate.clear()  # the listener cannot reconnect until the gate opens
        async with store.connection() as conn:
            await conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        await until(lambda: not signals.listening)
        # Cancelled while no one listens: the notification is lost.
        assert (await lc.cancel_turn(chat.scope, turn)).won
        await asyncio.sleep(0.3)
        assert not event.is_set()
        gate.set()
        await asyncio.wait_for(event.wait(), PROMPT_SECS)
        assert signals.connects == 2
        assert signals.listening
    finally:
        await signals.close()


async def test_polling_store_signals_without_listen(turnstore_pg_dsn: str) -> None:
    async with await PostgresStore.open(
        turnstore_pg_dsn, notifications=False, cancel_poll_secs=0.1
    ) as store:
        lc = TurnLifecycle(store)
        chat = Chat()
        turn = await started(store, chat)
        async with lc.keep_alive(chat.scope, turn.id) as ka:
            assert not ka.is_over
            await asyncio.sleep(0.3)
            assert not ka.is_over  # polled, still running
            async with await PostgresStore.open(turnstore_pg_dsn) as other:
                assert (await TurnLifecycle(other).cancel_turn(chat.scope, turn)).won
            await asyncio.wait_for(ka.wait_finalized(), PROMPT_SECS)
        signals = store.finalize_signals()
        assert not signals.notifications
        assert signals.connects == 0


async def test_one_listening_connection_per_store(
    turnstore_postgres_store: PostgresStore,
) -> None:
    store = turnstore_postgres_store
    lc = TurnLifecycle(store)
    turns = [(chat, await started(store, chat)) for chat in (Chat(), Chat(), Chat())]
    kas = [lc.keep_alive(chat.scope, turn.id) for chat, turn in turns]
    for ka in kas:
        await ka.__aenter__()
        assert not ka.is_over
    signals = store.finalize_signals()
    await until(lambda: signals.listening)
    async with store.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'turnstore-listener'"
            " AND datname = current_database()"
        )
        assert await cur.fetchone() == (1,)
    for (_chat, turn), ka in zip(turns, kas, strict=True):
        assert (await lc.cancel_turn(AccessScope.allow_all(), turn)).won
        await asyncio.wait_for(ka.wait_finalized(), PROMPT_SECS)
        await ka.stop()
    assert signals.waiting == 0


async def test_cancel_poll_secs_must_be_positive(turnstore_pg_dsn: str) -> None:
    with pytest.raises(InvalidParameterError):
        await PostgresStore.open(turnstore_pg_dsn, cancel_poll_secs=0)
