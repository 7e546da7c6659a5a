"""turnstore's sync API: the same stores, repository, lifecycle and watchdog, on threads.

For synchronous hosts (Django, Flask, Celery workers): the runner of the PostgreSQL backend
is the host's own ``psycopg.Connection``, so a turn's writes can join the host's
transaction. Every module below ``turnstore.sync`` except this one is generated from its
asyncio twin by ``tools/async_to_sync.py`` (``turnstore.sync.postgres.store`` from
``turnstore.postgres.store``, and so on) and checked in CI; the pure modules (model, scope,
rules, errors, settings, ids, statements) are shared, and so are the outcome and report
classes, so both APIs hand out the very same types. See docs/sync.md.
"""

from turnstore.sync.election import InProcessElection, LeaderElection
from turnstore.sync.keepalive import KeepAlive
from turnstore.sync.lifecycle import (
    FinalizeHook,
    FinalizeOutcome,
    MutationHook,
    MutationKind,
    MutationResult,
    RejectReason,
    StartKind,
    StartOutcome,
    TurnLifecycle,
)
from turnstore.sync.memory import InMemoryConnection, InMemoryStore, InMemoryTurnRepository
from turnstore.sync.postgres import (
    AdvisoryLockElection,
    PostgresStore,
    PostgresTurnRepository,
    check_schema,
    migrate,
)
from turnstore.sync.repository import TurnRepository, TurnStore
from turnstore.sync.watchdog import OrphanWatchdog, SweepReport, WatchdogMetrics

__all__ = [
    "AdvisoryLockElection",
    "FinalizeHook",
    "FinalizeOutcome",
    "InMemoryConnection",
    "InMemoryStore",
    "InMemoryTurnRepository",
    "InProcessElection",
    "KeepAlive",
    "LeaderElection",
    "MutationHook",
    "MutationKind",
    "MutationResult",
    "OrphanWatchdog",
    "PostgresStore",
    "PostgresTurnRepository",
    "RejectReason",
    "StartKind",
    "StartOutcome",
    "SweepReport",
    "TurnLifecycle",
    "TurnRepository",
    "TurnStore",
    "WatchdogMetrics",
    "check_schema",
    "migrate",
]
