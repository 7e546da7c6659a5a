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
    SchemaMismatchError,
    ScopeDeniedError,
    StoreUnavailableError,
    TurnNotFoundError,
    TurnStoreError,
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
    "RequesterType",
    "SchemaMismatchError",
    "ScopeConstraint",
    "ScopeDeniedError",
    "ScopeFilter",
    "StoreUnavailableError",
    "ToolCallType",
    "Turn",
    "TurnNotFoundError",
    "TurnRepository",
    "TurnState",
    "TurnStore",
    "TurnStoreError",
    "UpdatePreflightParams",
    "__version__",
]
