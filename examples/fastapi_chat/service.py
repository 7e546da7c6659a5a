"""The chat service: every use of turnstore by the example is in this module.

``ChatService`` starts, replays, cancels, retries, edits and deletes turns, and runs each
generation in a task it owns (not the request's), so a client that disconnects does not
stop the answer from being generated and stored. The HTTP layer (``app.py``) only maps
requests to these methods and refusals to responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg

from fastapi_chat import messages
from fastapi_chat.model import Model
from fastapi_chat.streams import End, TurnStream
from turnstore import (
    AccessScope,
    CreateTurnParams,
    FinalizeOutcome,
    MutationResult,
    OrphanWatchdog,
    PostgresStore,
    RequesterType,
    ScopeConstraint,
    ScopeFilter,
    StartOutcome,
    SweepReport,
    Turn,
    TurnLifecycle,
    TurnNotFoundError,
    TurnState,
    new_uuid7,
)

__all__ = ["Caller", "ChatService", "Refused", "Reply"]

logger = logging.getLogger("fastapi_chat")

Connection = psycopg.AsyncConnection[Any]


@dataclass(frozen=True)
class Caller:
    """Who is asking: one tenant, one user, and the scope derived from the tenant."""

    tenant_id: UUID
    user_id: UUID

    @property
    def scope(self) -> AccessScope:
        return AccessScope.for_tenant(self.tenant_id)


class Refused(Exception):
    """A refusal that is an outcome rather than an error (a rejected start, a lost
    finalize); the HTTP layer maps it with ``turnstore.http``."""

    def __init__(self, outcome: StartOutcome | FinalizeOutcome) -> None:
        super().__init__(outcome)
        self.outcome = outcome


@dataclass(frozen=True)
class Reply:
    """What an SSE response sends: a live stream, or the stored answer of a replay."""

    turn: Turn
    stream: TurnStream | None = None
    stored_answer: str | None = None


class _Lost(Exception):
    """The complete did not win: roll the assistant message back."""


class ChatService:
    def __init__(
        self,
        store: PostgresStore,
        lifecycle: TurnLifecycle[Connection],
        watchdog: OrphanWatchdog[Connection],
        model: Model,
    ) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.watchdog = watchdog
        self.model = model
        self._streams: dict[UUID, TurnStream] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- starting and replaying

    async def send(self, caller: Caller, chat_id: UUID, request_id: UUID, text: str) -> Reply:
        """Begin a turn for the user's message and stream its answer; replay the stored
        answer when this request already completed; ``Refused`` otherwise."""
        params = CreateTurnParams(
            id=new_uuid7(),
            tenant_id=caller.tenant_id,
            chat_id=chat_id,
            request_id=request_id,
            requester_type=RequesterType.USER,
            requester_user_id=caller.user_id,
            provider_name="fake",
        )
        async with self.store.transaction() as conn:
            outcome = await self.lifecycle.begin_turn(caller.scope, params, runner=conn)
            if outcome.started:
                assert outcome.turn is not None
                await messages.insert(
                    conn,
                    id=new_uuid7(),
                    tenant_id=caller.tenant_id,
                    chat_id=chat_id,
                    turn_id=outcome.turn.id,
                    role="user",
                    content=text,
                )
            elif outcome.replayed:
                assert outcome.turn is not None
                assert outcome.turn.assistant_message_id is not None
                answer = await messages.text_of(
                    conn, caller.tenant_id, outcome.turn.assistant_message_id
                )
                return Reply(outcome.turn, stored_answer=answer or "")
        if not outcome.started:
            raise Refused(outcome)
        assert outcome.turn is not None
        return Reply(outcome.turn, stream=self._generate(caller, outcome.turn, text))

    # ---- the generation, owned by the service

    def _generate(self, caller: Caller, turn: Turn, prompt: str) -> TurnStream:
        stream = TurnStream(turn.id)
        self._streams[turn.id] = stream
        task = asyncio.create_task(self._run(caller, turn, prompt, stream), name=f"turn-{turn.id}")
        self._tasks.add(task)

        def forget(done: asyncio.Task[None]) -> None:
            self._tasks.discard(done)
            self._streams.pop(turn.id, None)

        task.add_done_callback(forget)
        return stream

    async def _run(self, caller: Caller, turn: Turn, prompt: str, stream: TurnStream) -> None:
        scope = caller.scope
        try:
            async with self.lifecycle.keep_alive(scope, turn.id) as keep_alive:
                async for token in self.model(prompt):
                    # Stop as soon as the turn is over: cancelled by this process (at once),
                    # or finalized elsewhere (seen by the next keep-alive write).
                    if stream.cancel_requested or not await keep_alive.touch():
                        await stream.close(End(await self._state_of(scope, turn)))
                        return
                    await stream.push(token)
            message_id = new_uuid7()
            try:
                async with self.store.transaction() as conn:
                    await messages.insert(
                        conn,
                        id=message_id,
                        tenant_id=caller.tenant_id,
                        chat_id=turn.chat_id,
                        turn_id=turn.id,
                        role="assistant",
                        content="".join(stream.tokens),
                    )
                    done = await self.lifecycle.complete_turn(scope, turn, message_id, runner=conn)
                    if not done.won:
                        raise _Lost
            except _Lost:
                await stream.close(End(await self._state_of(scope, turn)))
                return
            await stream.close(End(TurnState.COMPLETED.value, message_id))
        except asyncio.CancelledError:
            # The service is shutting down mid-stream: say so now rather than leave the
            # turn to the watchdog.
            with contextlib.suppress(Exception):
                await asyncio.shield(self.lifecycle.fail_turn(scope, turn, "server_shutdown"))
            await stream.close(End(TurnState.FAILED.value, error_code="server_shutdown"))
            raise
        except Exception as exc:
            logger.exception("generation of turn %s failed", turn.id)
            code = "model_error"
            with contextlib.suppress(Exception):
                await self.lifecycle.fail_turn(scope, turn, code, str(exc)[:500])
            await stream.close(End(TurnState.FAILED.value, error_code=code))

    async def _state_of(self, scope: AccessScope, turn: Turn) -> str:
        try:
            return (await self.find_turn(scope, turn.tenant_id, turn.chat_id, turn.id)).state.value
        except TurnNotFoundError:
            return "deleted"

    def stream_of(self, turn_id: UUID) -> TurnStream | None:
        return self._streams.get(turn_id)

    async def shutdown(self) -> None:
        """Cancel the generations still running (each fails its turn) and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # ---- reads

    async def find_turn(
        self, scope: AccessScope, tenant_id: UUID, chat_id: UUID, turn_id: UUID
    ) -> Turn:
        """The chat's turn ``turn_id`` if the caller's scope sees it and it is not deleted;
        ``TurnNotFoundError`` otherwise (the two are indistinguishable on purpose).

        The caller's scope narrowed to this one id, then the chat's latest turn under it.
        """
        narrowed = AccessScope.from_constraints(
            [
                ScopeConstraint([*constraint.filters, ScopeFilter.eq("id", turn_id)])
                for constraint in scope.constraints
            ]
        )
        async with self.store.connection() as conn:
            turn = await self.store.turns.find_latest_turn(conn, narrowed, tenant_id, chat_id)
        if turn is None:
            raise TurnNotFoundError(turn_id)
        return turn

    async def history(self, caller: Caller, chat_id: UUID) -> list[messages.Message]:
        async with self.store.connection() as conn:
            return await messages.list_chat(conn, caller.tenant_id, chat_id)

    # ---- cancel, retry, edit, delete

    async def cancel(self, caller: Caller, chat_id: UUID, turn_id: UUID) -> Turn:
        turn = await self.find_turn(caller.scope, caller.tenant_id, chat_id, turn_id)
        outcome = await self.lifecycle.cancel_turn(caller.scope, turn)
        if not outcome.won:
            raise Refused(outcome)
        stream = self._streams.get(turn_id)
        if stream is not None:
            stream.cancel_requested = True
        return await self.find_turn(caller.scope, caller.tenant_id, chat_id, turn_id)

    async def retry(self, caller: Caller, chat_id: UUID, turn_id: UUID) -> Reply:
        return await self._replace(caller, chat_id, turn_id, None)

    async def edit(self, caller: Caller, chat_id: UUID, turn_id: UUID, text: str) -> Reply:
        return await self._replace(caller, chat_id, turn_id, text)

    async def _replace(
        self, caller: Caller, chat_id: UUID, turn_id: UUID, edited: str | None
    ) -> Reply:
        """Retry (the same prompt) or edit (a new one) the chat's last turn, then stream the
        new turn's answer. The old turn's messages are hidden and the new user message is
        written in the transaction of the mutation."""
        target = await self.find_turn(caller.scope, caller.tenant_id, chat_id, turn_id)
        prompt: list[str] = []

        async def hook(conn: Connection, result: MutationResult) -> None:
            assert result.new_turn is not None
            text = edited
            if text is None:
                text = await messages.user_text(conn, caller.tenant_id, result.target.id) or ""
            prompt.append(text)
            await messages.mark_deleted(conn, caller.tenant_id, result.target.id)
            await messages.insert(
                conn,
                id=new_uuid7(),
                tenant_id=caller.tenant_id,
                chat_id=chat_id,
                turn_id=result.new_turn.id,
                role="user",
                content=text,
            )

        mutate = self.lifecycle.retry_turn if edited is None else self.lifecycle.edit_turn
        result = await mutate(
            caller.scope, caller.tenant_id, chat_id, target.request_id, caller.user_id, hook=hook
        )
        assert result.new_turn is not None
        return Reply(result.new_turn, stream=self._generate(caller, result.new_turn, prompt[0]))

    async def delete(self, caller: Caller, chat_id: UUID, turn_id: UUID) -> None:
        target = await self.find_turn(caller.scope, caller.tenant_id, chat_id, turn_id)

        async def hook(conn: Connection, result: MutationResult) -> None:
            await messages.mark_deleted(conn, caller.tenant_id, result.target.id)

        await self.lifecycle.delete_turn(
            caller.scope, caller.tenant_id, chat_id, target.request_id, caller.user_id, hook=hook
        )

    # ---- operations

    async def sweep(self) -> SweepReport:
        """One watchdog scan now (the admin endpoint)."""
        return await self.watchdog.run_once()
