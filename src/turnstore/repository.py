"""The repository contract: ``TurnRepository`` and the ``TurnStore`` that hands out runners.

Both are ``typing.Protocol`` classes, generic in the *runner*: the handle each call runs on.
On PostgreSQL the runner is a ``psycopg.AsyncConnection`` (inside or outside a transaction
the caller opened); on the in-memory fake it is the fake's own connection object. Code
written against these protocols (the lifecycle rules, the watchdog, a host's services) runs
on either backend unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol, TypeVar
from uuid import UUID

from turnstore.election import LeaderElection
from turnstore.model import (
    CasCompleteParams,
    CasTerminalParams,
    CreateTurnParams,
    ToolCallType,
    Turn,
    UpdatePreflightParams,
)
from turnstore.paging import TurnPage
from turnstore.scope import AccessScope

__all__ = ["RunnerT", "TurnRepository", "TurnStore"]

RunnerT = TypeVar("RunnerT")
RunnerT_contra = TypeVar("RunnerT_contra", contravariant=True)


class TurnRepository(Protocol[RunnerT_contra]):
    """Persistence of turns: the methods of docs/design.md, *Repository methods*.

    Every scoped method sees only rows that ``scope`` permits; an out-of-scope row is
    indistinguishable from a missing one. Methods returning ``int`` report rows affected
    (0 or 1). A typed error leaves the caller's transaction usable.

    A chat is identified by ``(tenant_id, chat_id)``: every method naming a chat takes the
    tenant right before the chat id, and two tenants' chats with the same id share nothing
    (keys, the running slot, the latest turn, the chat lock).
    """

    async def create_turn(
        self, runner: RunnerT_contra, scope: AccessScope, params: CreateTurnParams
    ) -> Turn:
        """Insert a ``running`` turn stamped with database time.

        Raises ``ScopeDeniedError`` (nothing written) when ``scope`` does not permit the
        new row, ``DuplicateRequestError`` when ``(tenant_id, chat_id, request_id)`` is taken,
        ``GenerationInProgressError`` when the chat already has a running turn, and
        ``DuplicateTurnIdError`` when the id is taken.
        """
        ...

    async def find_by_chat_and_request_id(
        self,
        runner: RunnerT_contra,
        scope: AccessScope,
        tenant_id: UUID,
        chat_id: UUID,
        request_id: UUID,
    ) -> Turn | None:
        """The turn holding this idempotency key, deleted turns included."""
        ...

    async def find_running_by_chat_id(
        self, runner: RunnerT_contra, scope: AccessScope, tenant_id: UUID, chat_id: UUID
    ) -> Turn | None:
        """The chat's running, non-deleted turn."""
        ...

    async def cas_update_state(
        self, runner: RunnerT_contra, scope: AccessScope, params: CasTerminalParams
    ) -> int:
        """CAS ``running -> params.state``; 1 if this call won, 0 otherwise.

        A win is announced to the store's finalize signals when it commits, so a stream
        waiting on ``KeepAlive.finalized`` stops (docs/lifecycle.md, *Cancel*); a CAS that
        loses, or whose transaction rolls back, announces nothing.
        """
        ...

    async def cas_update_completed(
        self, runner: RunnerT_contra, scope: AccessScope, params: CasCompleteParams
    ) -> int:
        """CAS ``running -> completed`` with the assistant message id; 1 if this call won.

        A win is announced to the store's finalize signals when it commits, so a stream
        waiting on ``KeepAlive.finalized`` stops (docs/lifecycle.md, *Cancel*); a CAS that
        loses, or whose transaction rolls back, announces nothing.
        """
        ...

    async def set_assistant_message_id(
        self, runner: RunnerT_contra, scope: AccessScope, turn_id: UUID, assistant_message_id: UUID
    ) -> None:
        """Set ``assistant_message_id`` in any state; ``TurnNotFoundError`` if no row in scope."""
        ...

    async def soft_delete(
        self,
        runner: RunnerT_contra,
        scope: AccessScope,
        turn_id: UUID,
        replaced_by_request_id: UUID | None,
    ) -> None:
        """Mark the turn deleted (idempotent: a second delete keeps the first);
        ``TurnNotFoundError`` if no row in scope."""
        ...

    async def find_latest_turn(
        self, runner: RunnerT_contra, scope: AccessScope, tenant_id: UUID, chat_id: UUID
    ) -> Turn | None:
        """The non-deleted turn with the greatest ``(started_at, id)``."""
        ...

    async def update_progress_at(
        self, runner: RunnerT_contra, scope: AccessScope, turn_id: UUID
    ) -> int:
        """Touch ``last_progress_at`` while the turn runs; 0 once it is terminal."""
        ...

    async def touch_turns(
        self, runner: RunnerT_contra, targets: Sequence[tuple[AccessScope, UUID]]
    ) -> list[bool]:
        """``update_progress_at`` for many turns, each under its own scope, in one statement.

        ``targets`` is a list or tuple of at most ``MAX_TOUCH_TARGETS`` ``(scope, turn_id)``
        pairs. Every running turn that at least one of its targets' scopes permits gets one
        ``last_progress_at`` (one clock reading for all); the result says, per target in
        order, whether that target's turn was touched and its scope permits it: ``False``
        for a turn that is terminal, missing or outside that target's scope. Only
        ``last_progress_at`` and ``updated_at`` change (docs/design.md, *Keep-alive hub*).
        """
        ...

    async def find_orphan_candidates(
        self, runner: RunnerT_contra, timeout_secs: int, limit: int
    ) -> list[Turn]:
        """Running, non-deleted turns with no progress for ``timeout_secs``, oldest first.

        Unscoped: for the system watchdog only.
        """
        ...

    async def cas_finalize_orphan(
        self,
        runner: RunnerT_contra,
        turn_id: UUID,
        timeout_secs: int,
        *,
        tenant_id: UUID | None = None,
    ) -> int:
        """Fail the turn with ``orphan_timeout`` if it is *still* an orphan; 1 if this call won.

        ``tenant_id``, the candidate's (the watchdog passes it), also requires the turn to
        be that tenant's, and lets the statement touch only the tenant's partition or shard
        (docs/scaling.md); without it the turn is found by id alone.

        A win is announced to the store's finalize signals when it commits, so a stream
        waiting on ``KeepAlive.finalized`` stops (docs/lifecycle.md, *Cancel*); a CAS that
        loses, or whose transaction rolls back, announces nothing.
        """
        ...

    async def find_latest_for_update(
        self, runner: RunnerT_contra, scope: AccessScope, tenant_id: UUID, chat_id: UUID
    ) -> Turn | None:
        """The latest turn, locked (with the chat) until the transaction ends.

        The chat lock is taken only for a chat ``scope`` can see: at once when it permits
        the whole tenant (``AccessScope.permits_tenant``), else only when it sees a live turn
        of the chat, so a caller never waits for, or holds, another tenant's chat.

        After waiting on another transaction, returns the latest turn as that transaction left it
        (docs/design.md, *The latest-turn lock*).
        """
        ...

    async def update_preflight_fields(
        self, runner: RunnerT_contra, scope: AccessScope, params: UpdatePreflightParams
    ) -> int:
        """Write the six preflight fields while the turn runs; 1 if written."""
        ...

    async def increment_tool_calls(
        self, runner: RunnerT_contra, scope: AccessScope, turn_id: UUID, tool: ToolCallType
    ) -> None:
        """Add one to the tool's counter while the turn runs and is not deleted."""
        ...

    async def get_turn(
        self, runner: RunnerT_contra, scope: AccessScope, turn_id: UUID
    ) -> Turn | None:
        """The turn with this id, deleted or not, if ``scope`` permits it."""
        ...

    async def list_turns(
        self,
        runner: RunnerT_contra,
        scope: AccessScope,
        tenant_id: UUID,
        chat_id: UUID,
        *,
        limit: int = 50,
        before: str | None = None,
        include_deleted: bool = False,
    ) -> TurnPage:
        """A page of the chat's turns that ``scope`` permits, newest first by
        ``(started_at, id)``: at most ``limit`` (1..500) turns strictly older than the
        cursor ``before`` (a ``TurnPage.next_cursor``; ``None`` for the first page).
        Soft-deleted turns only with ``include_deleted``. ``InvalidParameterError`` for a
        bad limit or a cursor this library did not make."""
        ...

    async def purge_turns(self, runner: RunnerT_contra, older_than_secs: int, limit: int) -> int:
        """Delete up to ``limit`` terminal turns (deleted or not) that ended at least
        ``older_than_secs`` ago, oldest first, skipping rows another transaction holds;
        return how many. Never a running turn. Unscoped: for retention jobs only."""
        ...

    async def count_purgeable(self, runner: RunnerT_contra, older_than_secs: int) -> int:
        """How many turns ``purge_turns`` would delete with no limit (a dry run)."""
        ...

    async def erase_tenant_turns(self, runner: RunnerT_contra, tenant_id: UUID, limit: int) -> int:
        """Delete up to ``limit`` turns of the tenant, running ones included, waiting for
        rows another transaction holds; return how many. Unscoped: for erasure only."""
        ...

    async def count_tenant_turns(self, runner: RunnerT_contra, tenant_id: UUID) -> int:
        """How many turns the tenant has (what ``erase_tenant_turns`` has left to do)."""
        ...


class TurnStore(Protocol[RunnerT]):
    """A backend: the repository plus the way to get a runner for it."""

    @property
    def turns(self) -> TurnRepository[RunnerT]:
        """The repository bound to this store's schema."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[RunnerT]:
        """A runner inside a new transaction: committed on clean exit, rolled back on error."""
        ...

    def connection(self) -> AbstractAsyncContextManager[RunnerT]:
        """A runner in autocommit: each call is atomic on its own."""
        ...

    async def migrate(self) -> None:
        """Bring the schema up to date (a no-op on the fake)."""
        ...

    def leader_election(self) -> LeaderElection:
        """A new election for this store's orphan watchdog: one watchdog per database scans
        at a time, and only the store knows how its instances can agree on which one.

        PostgreSQL: a lease row renewed through the store's connections; the in-memory fake: a lock
        among the watchdogs of one process. Each call returns a new, not yet acquired
        election; ``OrphanWatchdog`` asks for one unless it is given its own.
        """
        ...

    async def close(self) -> None:
        """Release every resource the store owns."""
        ...
