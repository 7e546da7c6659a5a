"""turnstore: durable, exactly-once chat turns on PostgreSQL.

The public names are listed in ``__all__``. Backends live in ``turnstore.postgres`` and
``turnstore.memory``; the lifecycle rules in ``turnstore.lifecycle``; the orphan watchdog in
``turnstore.watchdog``; test helpers in ``turnstore.testing``.
"""

from turnstore.errors import (
    DuplicateRequestError,
    DuplicateTurnIdError,
    ForbiddenError,
    GenerationInProgressError,
    InvalidParameterError,
    InvalidTurnStateError,
    MigrationError,
    NotLatestTurnError,
    RequestFingerprintMismatchError,
    RequestInProgressError,
    SchemaMismatchError,
    ScopeDeniedError,
    StoreUnavailableError,
    TurnNotFoundError,
    TurnStoreError,
)
from turnstore.fingerprint import request_fingerprint
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

__version__ = "0.1.0"

__all__ = [
    "AccessScope",
    "CasCompleteParams",
    "CasTerminalParams",
    "CreateTurnParams",
    "DuplicateRequestError",
    "DuplicateTurnIdError",
    "ForbiddenError",
    "GenerationInProgressError",
    "InvalidParameterError",
    "InvalidTurnStateError",
    "MigrationError",
    "NotLatestTurnError",
    "RequestFingerprintMismatchError",
    "RequestInProgressError",
    "RequesterType",
    "SchemaMismatchError",
    "ScopeConstraint",
    "ScopeDeniedError",
    "ScopeFilter",
    "StoreUnavailableError",
    "ToolCallType",
    "Turn",
    "TurnNotFoundError",
    "TurnPage",
    "TurnRepository",
    "TurnState",
    "TurnStore",
    "TurnStoreError",
    "UpdatePreflightParams",
    "__version__",
    "request_fingerprint",
]
