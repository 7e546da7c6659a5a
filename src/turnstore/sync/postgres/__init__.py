# WARNING: this file is generated from src/turnstore/postgres/__init__.py by tools/async_to_sync.py; do not edit.
"""The PostgreSQL backend: ``PostgresTurnRepository``, migrations, ``PostgresStore`` and the
watchdog's elections (a lease row by default, an advisory lock for direct connections).

One module per role: ``statements`` (every SQL statement, by name), ``scope`` (scope
compilation), ``errors`` (the driver-error boundary), ``repository``, ``migrations``,
``store``, ``lease`` and ``election``. The names below are the backend's public ones.
"""

from __future__ import annotations

from turnstore.model import validate_orphan_args
from turnstore.postgres.lease import (
    DEFAULT_LEASE_SECS,
    DEFAULT_RENEW_INTERVAL_SECS,
    WATCHDOG_LEASE_NAME,
    LeaseElection,
)
from turnstore.postgres.scope import compile_scope
from turnstore.postgres.statements import CHAT_LOCK_CLASS, DEFAULT_SCHEMA, MIGRATION_LOCK_CLASS
from turnstore.sync.postgres.election import (
    DEFAULT_LEADER_CHECK_TIMEOUT_SECS,
    LEADER_CONNECTION_DEFAULTS,
    AdvisoryLockElection,
    advisory_lock_key,
    leader_connection_kwargs,
)
from turnstore.sync.postgres.migrations import (
    Migration,
    SchemaStatus,
    check_schema,
    migrate,
    migration_files,
    schema_sql,
)
from turnstore.sync.postgres.repository import PostgresTurnRepository
from turnstore.sync.postgres.store import PostgresStore

__all__ = [
    "CHAT_LOCK_CLASS",
    "DEFAULT_LEADER_CHECK_TIMEOUT_SECS",
    "DEFAULT_LEASE_SECS",
    "DEFAULT_RENEW_INTERVAL_SECS",
    "DEFAULT_SCHEMA",
    "LEADER_CONNECTION_DEFAULTS",
    "MIGRATION_LOCK_CLASS",
    "WATCHDOG_LEASE_NAME",
    "AdvisoryLockElection",
    "LeaseElection",
    "Migration",
    "PostgresStore",
    "PostgresTurnRepository",
    "SchemaStatus",
    "advisory_lock_key",
    "check_schema",
    "compile_scope",
    "leader_connection_kwargs",
    "migrate",
    "migration_files",
    "schema_sql",
    "validate_orphan_args",
]
