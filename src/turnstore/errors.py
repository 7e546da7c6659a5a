"""The typed errors of turnstore.

Every error a backend raises for a reason the caller can act on is one of these classes,
on PostgreSQL and on the in-memory fake alike. Each carries a stable ``code`` (useful
for HTTP mapping), ``retryable`` (whether the same call may succeed later, unchanged) and
the ids involved. Driver errors are always chained (``from exc``). The table of every code
is in docs/deploying.md, *Error codes*.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

__all__ = [
    "DuplicateRequestError",
    "DuplicateTurnIdError",
    "ForbiddenError",
    "GenerationInProgressError",
    "InvalidParameterError",
    "InvalidTurnStateError",
    "LockTimeoutError",
    "MigrationError",
    "NotLatestTurnError",
    "PoolDeadlockError",
    "PoolTimeoutError",
    "PreparedStatementsLostError",
    "RequestFingerprintMismatchError",
    "RequestInProgressError",
    "ScopeDeniedError",
    "SchemaMismatchError",
    "StatementTimeoutError",
    "StoreClosedError",
    "StoreUnavailableError",
    "TurnNotFoundError",
    "TurnStoreError",
]


class TurnStoreError(Exception):
    """Base class of every error turnstore raises on purpose.

    ``code`` is stable (an HTTP mapping or a metric can key on it); ``retryable`` says
    whether sending the same call again, unchanged, after a pause may succeed: ``True`` for
    a server that is down or busy, ``False`` for anything the caller must change first.
    """

    code: str = "turnstore_error"
    retryable: bool = False


class InvalidParameterError(TurnStoreError, ValueError):
    """A scalar argument (a timeout, a limit) is out of its documented range.

    Parameter *models* raise ``pydantic.ValidationError`` on construction instead; both
    are ``ValueError`` and both are raised before anything is written.
    """

    code = "invalid_parameter"


class ScopeDeniedError(TurnStoreError):
    """``create_turn`` was called with a scope that the new row would not satisfy.

    Nothing is written.
    """

    code = "scope_denied"

    def __init__(self, turn_id: UUID, tenant_id: UUID) -> None:
        self.turn_id = turn_id
        self.tenant_id = tenant_id
        super().__init__(
            f"access scope does not permit creating turn {turn_id} for tenant {tenant_id}"
        )


class DuplicateRequestError(TurnStoreError):
    """A turn with this ``(chat_id, request_id)`` already exists (deleted turns included).

    This is the ``request_id_conflict`` outcome of docs/design.md, *Starting a turn*.
    ``existing_turn_id`` names the turn holding the key only when the caller's scope permits that
    turn.
    """

    code = "request_id_conflict"

    def __init__(self, chat_id: UUID, request_id: UUID, existing_turn_id: UUID | None = None):
        self.chat_id = chat_id
        self.request_id = request_id
        self.existing_turn_id = existing_turn_id
        suffix = f" (turn {existing_turn_id})" if existing_turn_id is not None else ""
        super().__init__(f"chat {chat_id} already has a turn for request {request_id}{suffix}")


class RequestInProgressError(DuplicateRequestError):
    """The turn holding this ``(chat_id, request_id)`` is still running: a resend of a
    request that has not finished (``request_in_progress``). Asking again once it ends
    replays the answer, so retrying later helps."""

    code = "request_in_progress"
    retryable = True


class RequestFingerprintMismatchError(DuplicateRequestError):
    """The request id is taken by a turn whose request fingerprint differs: the same key
    was sent with another request (``request_fingerprint_mismatch``)."""

    code = "request_fingerprint_mismatch"
    retryable = False


class DuplicateTurnIdError(TurnStoreError):
    """A turn with this primary key already exists (ids are caller-provided)."""

    code = "turn_id_conflict"

    def __init__(self, turn_id: UUID) -> None:
        self.turn_id = turn_id
        super().__init__(f"a turn with id {turn_id} already exists")


class GenerationInProgressError(TurnStoreError):
    """The chat already has a running, non-deleted turn.

    ``running_turn_id`` is the id of that turn when it is known (it is not known when the
    running turn lies outside the caller's scope or was replaced in between).
    """

    code = "generation_in_progress"
    retryable = True  # the running turn ends (completes, fails, or the watchdog reclaims it)

    def __init__(self, chat_id: UUID, running_turn_id: UUID | None = None) -> None:
        self.chat_id = chat_id
        self.running_turn_id = running_turn_id
        suffix = f": turn {running_turn_id}" if running_turn_id is not None else ""
        super().__init__(f"chat {chat_id} already has a running turn{suffix}")


class TurnNotFoundError(TurnStoreError):
    """No turn matches, or the matching turn lies outside the caller's scope.

    The two cases are indistinguishable on purpose.
    """

    code = "turn_not_found"

    def __init__(
        self,
        turn_id: UUID | None = None,
        *,
        chat_id: UUID | None = None,
        request_id: UUID | None = None,
    ) -> None:
        self.turn_id = turn_id
        self.chat_id = chat_id
        self.request_id = request_id
        if turn_id is not None:
            what = f"turn {turn_id}"
        else:
            what = f"turn for request {request_id} in chat {chat_id}"
        super().__init__(f"{what} not found")


class ForbiddenError(TurnStoreError):
    """The actor is not the user who requested the turn (docs/design.md, *Retry, edit and
    delete*)."""

    code = "forbidden"

    def __init__(self, turn_id: UUID, actor_user_id: UUID | None) -> None:
        self.turn_id = turn_id
        self.actor_user_id = actor_user_id
        super().__init__(f"user {actor_user_id} may not mutate turn {turn_id}")


class InvalidTurnStateError(TurnStoreError):
    """The turn is in a state that does not allow the operation (e.g. still running)."""

    code = "invalid_turn_state"

    def __init__(self, turn_id: UUID, state: str) -> None:
        self.turn_id = turn_id
        self.state = state
        super().__init__(f"turn {turn_id} is {state}; the operation is not allowed")


class NotLatestTurnError(TurnStoreError):
    """Only the latest turn of a chat may be retried, edited or deleted."""

    code = "not_latest_turn"

    def __init__(self, turn_id: UUID, latest_turn_id: UUID | None) -> None:
        self.turn_id = turn_id
        self.latest_turn_id = latest_turn_id
        suffix = f" (latest: {latest_turn_id})" if latest_turn_id is not None else ""
        super().__init__(f"turn {turn_id} is not the latest turn of its chat{suffix}")


class StoreUnavailableError(TurnStoreError):
    """The database could not be reached, or the connection was lost mid-call, or the
    server is shutting down or starting up. Retryable: once the server accepts again, the
    store's connection check keeps dead pooled connections from failing later calls.

    A write whose connection was lost mid-call may or may not have committed; turnstore's
    writes are safe to repeat (a repeated start replays or is refused by the request key, a
    repeated finalize loses its compare-and-swap).
    """

    code = "store_unavailable"
    retryable = True


class PoolTimeoutError(StoreUnavailableError):
    """The server answers, but no pooled connection became free within the pool's timeout
    (``pool_timeout``): the pool is too small for the load, or connections are held too
    long. Retryable. A server that cannot be reached is ``store_unavailable`` instead."""

    code = "pool_timeout"
    retryable = True


class PoolDeadlockError(PoolTimeoutError):
    """The pool timed out while the calling task itself holds connections of the same pool
    (``pool_deadlock``): a call made inside ``store.transaction()`` without passing that
    transaction's connection as the runner waits for a connection its own caller holds.
    Not retryable: pass the connection (``runner=conn``) instead."""

    code = "pool_deadlock"
    retryable = False


class StoreClosedError(StoreUnavailableError):
    """The store (its pool) was closed: a call made after ``close()`` or during shutdown
    (``store_closed``). Not retryable on this store (a subclass of
    ``StoreUnavailableError``, so a host catching that one catches this one too)."""

    code = "store_closed"
    retryable = False


class PreparedStatementsLostError(TurnStoreError):
    """The server does not know the prepared statement the driver used, or already has one
    of that name (``prepared_statements_lost``): the store's connections go through a
    transaction-pooling pooler (PgBouncer in transaction mode, RDS Proxy, Supavisor), which
    hands each transaction to any server session. Not retryable: open the store with
    ``prepare_threshold=None`` (docs/deploying.md, *Poolers*)."""

    code = "prepared_statements_lost"
    retryable = False


class LockTimeoutError(TurnStoreError):
    """A wait for a chat or row lock took longer than the store's ``lock_timeout_secs``
    (``lock_timeout``): another transaction holds the chat or the turn. Retryable: the
    holder usually finishes soon. Inside the caller's own transaction the transaction is
    aborted (PostgreSQL leaves it so): roll it back before retrying."""

    code = "lock_timeout"
    retryable = True


class StatementTimeoutError(TurnStoreError):
    """A statement ran longer than the store's ``statement_timeout_secs`` or the server's
    ``statement_timeout`` (``statement_timeout``). Retryable with back-off: a busy server
    answers later; a statement that always exceeds the bound points at the server (a
    missing index, bloat). Inside the caller's own transaction the transaction is aborted."""

    code = "statement_timeout"
    retryable = True


class MigrationError(TurnStoreError):
    """A migration could not be applied, or an applied migration file has changed."""

    code = "migration_error"
    retryable = False


class SchemaMismatchError(TurnStoreError):
    """The database schema is not at the version this turnstore expects.

    ``pending``: migrations not applied yet; ``changed``: applied ones whose file changed
    since; ``unknown``: recorded versions this turnstore has no file for (a newer one
    migrated the database). Raised by ``PostgresStore.verify_schema`` and by
    ``PostgresStore.open(..., verify_schema=True)``.
    """

    code = "schema_mismatch"

    def __init__(
        self,
        schema: str,
        *,
        pending: Sequence[int] = (),
        changed: Sequence[int] = (),
        unknown: Sequence[int] = (),
    ) -> None:
        self.schema = schema
        self.pending = tuple(pending)
        self.changed = tuple(changed)
        self.unknown = tuple(unknown)
        problems = [
            f"{label}: {', '.join(f'{v:04d}' for v in versions)}"
            for label, versions in (
                ("pending", self.pending),
                ("changed since applied", self.changed),
                ("unknown to this turnstore", self.unknown),
            )
            if versions
        ]
        super().__init__(f"schema {schema!r} is not current ({'; '.join(problems)})")
