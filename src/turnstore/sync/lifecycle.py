# WARNING: this file is generated from src/turnstore/lifecycle.py by tools/async_to_sync.py; do not edit.
"""The rules around a turn (docs/design.md, *Starting a turn* to *Orphans and the watchdog*): start
or replay, keep-alive, finalize, and retry, edit or delete of the last turn.

``TurnLifecycle`` is written against the ``TurnStore`` protocol only, so the same code runs on
PostgreSQL and on the in-memory fake. Every operation either opens what it needs from the
store or runs on a runner the host passes (``runner=...``), so the host can put its own
writes (messages, quota, outbox) in the same transaction as the turn transition.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Generic
from uuid import UUID

from turnstore.errors import (
    DuplicateRequestError,
    DuplicateTurnIdError,
    GenerationInProgressError,
    NotLatestTurnError,
    TurnNotFoundError,
    TurnStoreError,
)
from turnstore.ids import new_uuid7
from turnstore.lifecycle import _START_ATTEMPTS, _WHOLE_CHAT
from turnstore.model import (
    CasCompleteParams,
    CasTerminalParams,
    CreateTurnParams,
    RequesterType,
    Turn,
    TurnState,
    check_turn,
)
from turnstore.outcomes import (
    FINALIZE_SPANS,
    FinalizeOutcome,
    MutationKind,
    MutationResult,
    RejectReason,
    StartKind,
    StartOutcome,
    generation_in_progress_outcome,
    outcome_of,
)
from turnstore.rules import decide_start, mutation_rejection, repeats_mutation
from turnstore.scope import AccessScope, check_scope
from turnstore.settings import KeepAliveSettings
from turnstore.sync.keepalive import KeepAlive
from turnstore.sync.repository import RunnerT, TurnRepository, TurnStore
from turnstore.telemetry import NO_TELEMETRY, Telemetry
from turnstore.validation import check_callable, check_instance, check_optional_uuid, check_uuid

__all__ = [
    "FinalizeHook",
    "FinalizeOutcome",
    "KeepAlive",
    "KeepAliveSettings",
    "MutationHook",
    "MutationKind",
    "MutationResult",
    "RejectReason",
    "StartKind",
    "StartOutcome",
    "TurnLifecycle",
    "new_uuid7",
]
FinalizeHook = Callable[[RunnerT, Turn], None]
MutationHook = Callable[[RunnerT, MutationResult], None]


def _check_optional(name: str, value: object, kind: type) -> None:
    if value is not None:
        check_instance(name, value, kind)


def _check_hook(hook: object) -> None:
    if hook is not None:
        check_callable("hook", hook)


def _check_finalize(scope: object, turn: object, hook: object) -> None:
    check_scope(scope)
    check_turn("turn", turn)
    _check_hook(hook)


class TurnLifecycle(Generic[RunnerT]):
    """The lifecycle rules of docs/design.md over one ``TurnStore``.

    Every method takes an optional ``runner``: when given, the work runs on it (inside the
    host's transaction, if the host opened one) and the host commits or rolls back; when
    omitted, the method opens what it needs from the store (a transaction where several
    statements must be atomic, an autocommit connection where one statement is enough).

    Every method checks its arguments before any statement runs (``_check_args``): a wrong
    type is an ``InvalidParameterError`` naming the argument, and nothing is written.
    """

    def __init__(
        self,
        store: TurnStore[RunnerT],
        *,
        keep_alive: KeepAliveSettings | None = None,
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        _check_optional("keep_alive", keep_alive, KeepAliveSettings)
        self._store = store
        self._keep_alive = keep_alive if keep_alive is not None else KeepAliveSettings()
        self._telemetry = telemetry

    @property
    def store(self) -> TurnStore[RunnerT]:
        """The store every operation runs on."""
        return self._store

    @property
    def turns(self) -> TurnRepository[RunnerT]:
        """The store's repository."""
        return self._store.turns

    @property
    def keep_alive_settings(self) -> KeepAliveSettings:
        """The settings ``keep_alive`` uses unless given others."""
        return self._keep_alive

    @property
    def telemetry(self) -> Telemetry:
        """Where this lifecycle reports spans and metrics (docs/telemetry.md)."""
        return self._telemetry

    def _on(self, runner: RunnerT | None, *, atomic: bool) -> AbstractContextManager[RunnerT]:
        if runner is not None:
            return nullcontext(runner)
        return self._store.transaction() if atomic else self._store.connection()

    def begin_turn(
        self, scope: AccessScope, params: CreateTurnParams, *, runner: RunnerT | None = None
    ) -> StartOutcome:
        """Start a turn, replay a completed one, or say why not (docs/design.md, *Starting a turn*).

        The insert is tried first: it succeeds exactly when step 1 (the request id is new) and step
        2 (no running turn in the chat) both hold, because the two unique indexes enforce them, so
        the common path is one statement. When the insert is refused, the steps are applied in the
        order of *Starting a turn* on fresh reads: a taken request id decides first (replay or
        ``request_id_conflict``), even while another turn runs; only then
        ``generation_in_progress``.
        """
        check_scope(scope)
        check_instance("params", params, CreateTurnParams)
        with self._telemetry.span("turnstore.begin_turn", {"turnstore.chat_id": params.chat_id}):
            outcome = self._begin_turn(scope, params, runner)
            reason = outcome.reason.value if outcome.reason is not None else None
            self._telemetry.turn_start(outcome.kind.value, reason)
            return outcome

    def _begin_turn(
        self, scope: AccessScope, params: CreateTurnParams, runner: RunnerT | None
    ) -> StartOutcome:
        with self._on(runner, atomic=False) as run:
            refused: GenerationInProgressError | None = None
            for _ in range(_START_ATTEMPTS):
                try:
                    turn = self.turns.create_turn(run, scope, params)
                except (
                    DuplicateRequestError,
                    GenerationInProgressError,
                    DuplicateTurnIdError,
                ) as exc:
                    existing = self.turns.find_by_chat_and_request_id(
                        run, scope, params.tenant_id, params.chat_id, params.request_id
                    )
                    if existing is not None:
                        decision = decide_start(existing, None, params.request_fingerprint)
                        return outcome_of(decision, existing)
                    if isinstance(exc, DuplicateTurnIdError):
                        raise
                    if isinstance(exc, DuplicateRequestError):
                        return StartOutcome(
                            StartKind.REJECTED, reason=RejectReason.REQUEST_ID_CONFLICT
                        )
                    running = self.turns.find_running_by_chat_id(
                        run, scope, params.tenant_id, params.chat_id
                    )
                    if running is not None:
                        return generation_in_progress_outcome(running, exc.running_turn_id)
                    refused = exc
                    continue
                return StartOutcome(StartKind.STARTED, turn=turn)
            assert refused is not None
            return generation_in_progress_outcome(None, refused.running_turn_id)

    def keep_alive(
        self,
        scope: AccessScope,
        turn_id: UUID,
        *,
        settings: KeepAliveSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> KeepAlive[RunnerT]:
        """A ``KeepAlive`` for one running turn (see ``KeepAlive``); ``clock`` is the
        monotonic clock that paces the writes."""
        _check_optional("settings", settings, KeepAliveSettings)
        return KeepAlive(
            self._store,
            scope,
            turn_id,
            settings or self._keep_alive,
            clock=clock,
            telemetry=self._telemetry,
        )

    def complete_turn(
        self,
        scope: AccessScope,
        turn: Turn,
        assistant_message_id: UUID,
        *,
        provider_response_id: str | None = None,
        hook: FinalizeHook[RunnerT] | None = None,
        runner: RunnerT | None = None,
    ) -> FinalizeOutcome:
        """CAS ``running -> completed``; the assistant message id is required, because a
        completed turn must be replayable."""
        _check_finalize(scope, turn, hook)
        params = CasCompleteParams(
            turn_id=turn.id,
            assistant_message_id=assistant_message_id,
            provider_response_id=provider_response_id,
        )

        def cas(run: RunnerT) -> int:
            return self.turns.cas_update_completed(run, scope, params)

        return self._finalize(scope, turn, TurnState.COMPLETED, cas, hook, runner)

    def fail_turn(
        self,
        scope: AccessScope,
        turn: Turn,
        error_code: str,
        error_detail: str | None = None,
        *,
        hook: FinalizeHook[RunnerT] | None = None,
        runner: RunnerT | None = None,
    ) -> FinalizeOutcome:
        """CAS ``running -> failed`` with an error code (1..64 chars) and optional detail
        (at most 16384 chars); a longer one is a ``pydantic.ValidationError``."""
        _check_finalize(scope, turn, hook)
        params = CasTerminalParams(
            turn_id=turn.id,
            state=TurnState.FAILED,
            error_code=error_code,
            error_detail=error_detail,
        )
        return self._finalize_state(scope, turn, params, hook, runner)

    def cancel_turn(
        self,
        scope: AccessScope,
        turn: Turn,
        *,
        partial_message_id: UUID | None = None,
        hook: FinalizeHook[RunnerT] | None = None,
        runner: RunnerT | None = None,
    ) -> FinalizeOutcome:
        """CAS ``running -> cancelled``, linking the partial answer's message if one was kept."""
        _check_finalize(scope, turn, hook)
        params = CasTerminalParams(
            turn_id=turn.id, state=TurnState.CANCELLED, assistant_message_id=partial_message_id
        )
        return self._finalize_state(scope, turn, params, hook, runner)

    def _finalize_state(
        self,
        scope: AccessScope,
        turn: Turn,
        params: CasTerminalParams,
        hook: FinalizeHook[RunnerT] | None,
        runner: RunnerT | None,
    ) -> FinalizeOutcome:

        def cas(run: RunnerT) -> int:
            return self.turns.cas_update_state(run, scope, params)

        return self._finalize(scope, turn, params.state, cas, hook, runner)

    def _finalize(
        self,
        scope: AccessScope,
        turn: Turn,
        state: TurnState,
        cas: Callable[[RunnerT], int],
        hook: FinalizeHook[RunnerT] | None,
        runner: RunnerT | None,
    ) -> FinalizeOutcome:
        with self._telemetry.span(FINALIZE_SPANS[state], {"turnstore.turn_id": turn.id}):
            outcome = self._finalize_in(scope, turn, state, cas, hook, runner)
            self._telemetry.turn_finalized(state.value, outcome.won)
            return outcome

    def _finalize_in(
        self,
        scope: AccessScope,
        turn: Turn,
        state: TurnState,
        cas: Callable[[RunnerT], int],
        hook: FinalizeHook[RunnerT] | None,
        runner: RunnerT | None,
    ) -> FinalizeOutcome:
        with self._on(runner, atomic=hook is not None) as run:
            won = cas(run) == 1
            if not won:
                found = self.turns.get_turn(run, scope, turn.id)
                if found is None:
                    raise TurnNotFoundError(turn.id)
                return FinalizeOutcome(turn.id, found.state, False, found)
            if hook is None:
                return FinalizeOutcome(turn.id, state, True)
            final = self.turns.find_by_chat_and_request_id(
                run, scope, turn.tenant_id, turn.chat_id, turn.request_id
            )
            assert final is not None, "the finalized turn is in scope: the CAS just saw it"
            hook(run, final)
            return FinalizeOutcome(turn.id, state, True, final)

    def retry_turn(
        self,
        scope: AccessScope,
        tenant_id: UUID,
        chat_id: UUID,
        request_id: UUID,
        actor_user_id: UUID | None,
        *,
        new_turn_id: UUID | None = None,
        new_request_id: UUID | None = None,
        hook: MutationHook[RunnerT] | None = None,
        runner: RunnerT | None = None,
    ) -> MutationResult:
        """Replace the chat's last turn by a new running turn with a new request id.

        ``new_request_id`` (recommended: made by the client, kept across resends) makes the
        retry idempotent: sending it again after the first one replaced the turn returns
        ``MutationResult.repeated`` (what a start with that request id gets) instead of
        ``not_latest_turn``. Without it the server generates one, and a resend is refused."""
        return self._mutate(
            MutationKind.RETRY,
            scope,
            (tenant_id, chat_id),
            request_id,
            actor_user_id,
            new_turn_id,
            hook,
            runner,
            new_request_id,
        )

    def edit_turn(
        self,
        scope: AccessScope,
        tenant_id: UUID,
        chat_id: UUID,
        request_id: UUID,
        actor_user_id: UUID | None,
        *,
        new_turn_id: UUID | None = None,
        new_request_id: UUID | None = None,
        hook: MutationHook[RunnerT] | None = None,
        runner: RunnerT | None = None,
    ) -> MutationResult:
        """Like ``retry_turn`` (``new_request_id`` included); the host writes the edited user
        message in the same transaction (through ``hook`` or its own ``runner``)."""
        return self._mutate(
            MutationKind.EDIT,
            scope,
            (tenant_id, chat_id),
            request_id,
            actor_user_id,
            new_turn_id,
            hook,
            runner,
            new_request_id,
        )

    def delete_turn(
        self,
        scope: AccessScope,
        tenant_id: UUID,
        chat_id: UUID,
        request_id: UUID,
        actor_user_id: UUID | None,
        *,
        hook: MutationHook[RunnerT] | None = None,
        runner: RunnerT | None = None,
    ) -> MutationResult:
        """Soft-delete the chat's last turn."""
        return self._mutate(
            MutationKind.DELETE,
            scope,
            (tenant_id, chat_id),
            request_id,
            actor_user_id,
            None,
            hook,
            runner,
        )

    def _mutate(
        self,
        kind: MutationKind,
        scope: AccessScope,
        chat: tuple[UUID, UUID],
        request_id: UUID,
        actor_user_id: UUID | None,
        new_turn_id: UUID | None,
        hook: MutationHook[RunnerT] | None,
        runner: RunnerT | None,
        new_request_id: UUID | None = None,
    ) -> MutationResult:
        tenant_id, chat_id = chat
        check_scope(scope)
        check_uuid("tenant_id", tenant_id)
        check_uuid("chat_id", chat_id)
        check_uuid("request_id", request_id)
        check_optional_uuid("actor_user_id", actor_user_id)
        check_optional_uuid("new_turn_id", new_turn_id)
        check_optional_uuid("new_request_id", new_request_id)
        _check_hook(hook)
        with self._telemetry.span(f"turnstore.{kind.value}_turn", {"turnstore.chat_id": chat_id}):
            try:
                result = self._mutate_in(
                    kind,
                    scope,
                    chat,
                    request_id,
                    actor_user_id,
                    new_turn_id,
                    hook,
                    runner,
                    new_request_id,
                )
            except TurnStoreError as exc:
                self._telemetry.turn_mutated(kind.value, exc.code)
                raise
            self._telemetry.turn_mutated(kind.value, None)
            return result

    def _mutate_in(
        self,
        kind: MutationKind,
        scope: AccessScope,
        chat: tuple[UUID, UUID],
        request_id: UUID,
        actor_user_id: UUID | None,
        new_turn_id: UUID | None,
        hook: MutationHook[RunnerT] | None,
        runner: RunnerT | None,
        new_request_id: UUID | None,
    ) -> MutationResult:
        tenant_id, chat_id = chat
        with self._on(runner, atomic=True) as run:
            target: Turn | None = None
            if scope.permits_tenant(tenant_id):
                latest = self.turns.find_latest_for_update(run, scope, tenant_id, chat_id)
            else:
                target = self.turns.find_by_chat_and_request_id(
                    run, scope, tenant_id, chat_id, request_id
                )
                if target is None:
                    raise TurnNotFoundError(chat_id=chat_id, request_id=request_id)
                latest = self.turns.find_latest_for_update(run, _WHOLE_CHAT, tenant_id, chat_id)
            if latest is not None and latest.request_id == request_id and scope.permits(latest):
                target = latest
            else:
                target = self.turns.find_by_chat_and_request_id(
                    run, scope, tenant_id, chat_id, request_id
                )
            rejection = mutation_rejection(
                target, latest, actor_user_id, chat_id=chat_id, request_id=request_id
            )
            if isinstance(rejection, NotLatestTurnError) and (
                not (latest is not None and scope.permits(latest))
            ):
                rejection = NotLatestTurnError(rejection.turn_id, None)
            if (
                isinstance(rejection, NotLatestTurnError)
                and target is not None
                and repeats_mutation(target, new_request_id)
            ):
                assert new_request_id is not None
                return self._repeated(run, scope, kind, target, new_request_id)
            if rejection is not None:
                raise rejection
            assert target is not None
            if kind is MutationKind.DELETE:
                self.turns.soft_delete(run, scope, target.id, None)
                result = MutationResult(kind, target)
            else:
                if new_request_id is None:
                    new_request_id = new_uuid7()
                new_turn = self.turns.create_turn(
                    run,
                    scope,
                    CreateTurnParams(
                        id=new_turn_id or new_uuid7(),
                        tenant_id=tenant_id,
                        chat_id=chat_id,
                        request_id=new_request_id,
                        requester_type=RequesterType.USER,
                        requester_user_id=actor_user_id,
                        provider_name=target.provider_name,
                        web_search_enabled=target.web_search_enabled,
                    ),
                )
                self.turns.soft_delete(run, scope, target.id, new_request_id)
                result = MutationResult(kind, target, new_turn, new_request_id)
            if hook is not None:
                hook(run, result)
            return result

    def _repeated(
        self,
        run: RunnerT,
        scope: AccessScope,
        kind: MutationKind,
        target: Turn,
        new_request_id: UUID,
    ) -> MutationResult:
        """A retry or edit already done: the outcome of a start with its request id."""
        new_turn = self.turns.find_by_chat_and_request_id(
            run, scope, target.tenant_id, target.chat_id, new_request_id
        )
        if new_turn is None:
            repeated = StartOutcome(StartKind.REJECTED, reason=RejectReason.REQUEST_ID_CONFLICT)
        else:
            repeated = outcome_of(decide_start(new_turn, None), new_turn)
        return MutationResult(kind, target, new_turn, new_request_id, repeated)
