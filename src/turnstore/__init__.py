"""turnstore: durable, exactly-once chat turns on PostgreSQL.

This module is the front door: every name a host needs is importable from ``turnstore``
(listed in ``__all__``). The modules behind it are mapped in docs/index.md, *Architecture*:
backends in ``turnstore.postgres`` and ``turnstore.memory``, the lifecycle rules in
``turnstore.lifecycle``, the orphan watchdog in ``turnstore.watchdog``, test helpers in
``turnstore.testing`` (not imported here: it needs pytest).
"""

from typing import TYPE_CHECKING, Any

from turnstore.election import InProcessElection, LeaderElection
from turnstore.errors import (
    DuplicateRequestError,
    DuplicateTurnIdError,
    ForbiddenError,
    GenerationInProgressError,
    InvalidParameterError,
    InvalidTurnStateError,
    LockTimeoutError,
    MigrationError,
    NotLatestTurnError,
    PoolDeadlockError,
    PoolTimeoutError,
    PreparedStatementsLostError,
    RequestFingerprintMismatchError,
    RequestInProgressError,
    SchemaMismatchError,
    ScopeDeniedError,
    StatementTimeoutError,
    StoreClosedError,
    StoreUnavailableError,
    TurnNotFoundError,
    TurnStoreError,
)
from turnstore.fingerprint import request_fingerprint
from turnstore.ids import new_uuid7
from turnstore.lifecycle import (
    FinalizeOutcome,
    KeepAlive,
    MutationKind,
    MutationResult,
    RejectReason,
    StartKind,
    StartOutcome,
    TurnLifecycle,
)
from turnstore.model import (
    CasCompleteParams,
    CasTerminalParams,
    CreateTurnParams,
    RequesterType,
    ToolCallType,
    Turn,
    TurnState,
    UpdatePreflightParams,
)
from turnstore.paging import TurnPage
from turnstore.repository import TurnRepository, TurnStore
from turnstore.scope import AccessScope, ScopeConstraint, ScopeFilter
from turnstore.settings import KeepAliveSettings, WatchdogSettings
from turnstore.watchdog import OrphanWatchdog, SweepReport, WatchdogMetrics

if TYPE_CHECKING:
    from turnstore.memory import InMemoryStore, InMemoryTurnRepository
    from turnstore.postgres import (
        AdvisoryLockElection,
        PostgresStore,
        PostgresTurnRepository,
        SchemaStatus,
        check_schema,
        migrate,
        schema_sql,
    )

#: The backends' names load on first use, so ``import turnstore`` (or the watchdog, or the
#: fake) does not import the PostgreSQL driver until a host asks for the PostgreSQL backend.
_LAZY = {
    "InMemoryStore": "turnstore.memory",
    "InMemoryTurnRepository": "turnstore.memory",
    "AdvisoryLockElection": "turnstore.postgres",
    "PostgresStore": "turnstore.postgres",
    "PostgresTurnRepository": "turnstore.postgres",
    "SchemaStatus": "turnstore.postgres",
    "check_schema": "turnstore.postgres",
    "migrate": "turnstore.postgres",
    "schema_sql": "turnstore.postgres",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'turnstore' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "AccessScope",
    "AdvisoryLockElection",
    "CasCompleteParams",
    "CasTerminalParams",
    "CreateTurnParams",
    "DuplicateRequestError",
    "DuplicateTurnIdError",
    "FinalizeOutcome",
    "ForbiddenError",
    "GenerationInProgressError",
    "InMemoryStore",
    "InMemoryTurnRepository",
    "InProcessElection",
    "InvalidParameterError",
    "InvalidTurnStateError",
    "LockTimeoutError",
    "KeepAlive",
    "KeepAliveSettings",
    "LeaderElection",
    "MigrationError",
    "MutationKind",
    "MutationResult",
    "NotLatestTurnError",
    "PoolDeadlockError",
    "PoolTimeoutError",
    "PreparedStatementsLostError",
    "OrphanWatchdog",
    "PostgresStore",
    "PostgresTurnRepository",
    "RejectReason",
    "RequestFingerprintMismatchError",
    "RequestInProgressError",
    "RequesterType",
    "SchemaMismatchError",
    "SchemaStatus",
    "ScopeConstraint",
    "ScopeDeniedError",
    "ScopeFilter",
    "StartKind",
    "StartOutcome",
    "StatementTimeoutError",
    "StoreClosedError",
    "StoreUnavailableError",
    "SweepReport",
    "ToolCallType",
    "Turn",
    "TurnLifecycle",
    "TurnNotFoundError",
    "TurnPage",
    "TurnRepository",
    "TurnState",
    "TurnStore",
    "TurnStoreError",
    "UpdatePreflightParams",
    "WatchdogMetrics",
    "WatchdogSettings",
    "check_schema",
    "migrate",
    "new_uuid7",
    "schema_sql",
    "__version__",
    "request_fingerprint",
]
