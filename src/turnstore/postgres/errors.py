"""The one boundary where psycopg and psycopg-pool errors become turnstore errors.

A unique violation of ``chat_turns`` is read off its constraint name and the key in the
error detail; a lost or refused server becomes ``StoreUnavailableError``, an exhausted pool
``PoolTimeoutError``, a closed one ``StoreClosedError``, a lock wait or a statement past
its bound ``LockTimeoutError`` / ``StatementTimeoutError``. The turnstore error is always
chained ``from`` the driver's. Errors with no turnstore meaning (a deadlock, a
serialization failure) pass through unchanged: the host decides whether to retry those.
The table of codes: docs/deploying.md, *Error codes*.
"""

from __future__ import annotations

import re
from types import TracebackType
from uuid import UUID

import psycopg
import psycopg_pool
from psycopg.errors import UniqueViolation

from turnstore.errors import (
    DuplicateRequestError,
    DuplicateTurnIdError,
    GenerationInProgressError,
    LockTimeoutError,
    PoolTimeoutError,
    PreparedStatementsLostError,
    StatementTimeoutError,
    StoreClosedError,
    StoreUnavailableError,
    TurnStoreError,
)

__all__ = [
    "DriverErrorBoundary",
    "driver_errors",
    "raise_translated",
    "translate",
    "unique_violation_error",
]

# SQLSTATEs meaning "the server went away or refused us" (class 08 is matched by prefix):
# admin_shutdown, crash_shutdown, cannot_connect_now (starting up), too_many_connections.
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})
_LOCK_NOT_AVAILABLE = "55P03"
# psycopg names its prepared statements _pg3_<n>; the server answering that it does not
# know one (26000), already has one (42P05), or that one takes other parameters (08P01) is a
# transaction pooler handing the connection's transactions to other server sessions.
_PREPARED_NAME = 'prepared statement "_pg3_'
_PREPARED_SQLSTATES = frozenset({"26000", "42P05", "08P01"})
_QUERY_CANCELED = "57014"
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


def unique_violation_error(exc: UniqueViolation) -> TurnStoreError | None:
    """The typed error for a unique violation of ``chat_turns``, read off the constraint
    name and the key in the error detail; ``None`` when it is not one of ours."""
    ids = [UUID(m) for m in _UUID_RE.findall(exc.diag.message_detail or "")]
    constraint = exc.diag.constraint_name
    if constraint == "chat_turns_pkey" and len(ids) == 1:
        return DuplicateTurnIdError(ids[0])
    # The keys are (tenant_id, chat_id, request_id) and (tenant_id, chat_id): see
    # sql/0003_tenant_keys.sql.
    if constraint == "chat_turns_tenant_chat_request_key" and len(ids) == 3:
        return DuplicateRequestError(ids[1], ids[2])
    if constraint == "chat_turns_one_running_per_tenant_chat" and len(ids) == 2:
        return GenerationInProgressError(ids[1])
    return None


def translate(exc: BaseException) -> TurnStoreError | None:
    """The turnstore error a driver or pool error stands for, if any."""
    if isinstance(exc, UniqueViolation):
        return unique_violation_error(exc)
    # The pool's errors first: both subclass OperationalError.
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return PoolTimeoutError(f"no pooled connection became free in time: {exc}")
    if isinstance(exc, psycopg_pool.PoolClosed):
        return StoreClosedError(f"the store is closed: {exc}")
    if (
        isinstance(exc, psycopg.Error)
        and exc.sqlstate in _PREPARED_SQLSTATES
        and _PREPARED_NAME in str(exc)
    ):
        return PreparedStatementsLostError(
            "the server lost this connection's prepared statements, as a transaction-pooling "
            "pooler does: open the store with prepare_threshold=None "
            f"(docs/deploying.md, Poolers): {exc}"
        )
    if isinstance(exc, psycopg.OperationalError) and not isinstance(
        exc, psycopg.errors.PipelineAborted
    ):
        state = exc.sqlstate
        if state is None or state.startswith("08") or state in _UNAVAILABLE_SQLSTATES:
            return StoreUnavailableError(f"PostgreSQL is unavailable: {exc}")
        if state == _LOCK_NOT_AVAILABLE:
            return LockTimeoutError(f"gave up waiting for a lock: {exc}")
        if state == _QUERY_CANCELED and "statement timeout" in str(exc):
            return StatementTimeoutError(f"a statement ran past its timeout: {exc}")
        return None
    return None


class DriverErrorBoundary:
    """``with driver_errors:`` re-raises driver errors as turnstore errors (chained).

    Stateless, so one shared instance serves every call at the cost of a plain ``with``.
    Errors it does not know (a deadlock, a serialization failure) pass through unchanged:
    the host decides whether to retry those.
    """

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, TurnStoreError):
            return
        mapped = translate(exc)
        if mapped is not None:
            raise mapped from exc


#: The shared boundary: ``with driver_errors: ...``.
driver_errors = DriverErrorBoundary()


def raise_translated(exc: Exception) -> None:
    """In an ``except`` block: raise the turnstore error ``exc`` stands for, chained; return
    (so the caller re-raises ``exc``) when it stands for none. The same mapping as
    ``driver_errors``, for hot paths where a ``try`` costs nothing until something fails."""
    if isinstance(exc, TurnStoreError):
        return
    mapped = translate(exc)
    if mapped is not None:
        raise mapped from exc
