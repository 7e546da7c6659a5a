# WARNING: this file is generated from src/turnstore/retention.py by tools/async_to_sync.py; do not edit.
"""Retention and erasure over any ``TurnStore`` (docs/retention.md).

- ``purge(store, older_than)`` deletes terminal turns (soft-deleted or not) that ended more
  than ``older_than`` ago, a batch per transaction, never a running turn;
- ``erase_tenant(store, tenant_id)`` deletes every turn of a tenant, running ones included
  (an erasure request leaves nothing behind).

Each batch is one short autocommit statement (``store.connection()``), so no lock is held
between batches and the chat's own traffic goes on meanwhile. Both return a
``RetentionReport``; ``dry_run`` only counts.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

from turnstore.model import check_uuid, validate_retention_args
from turnstore.retention import DEFAULT_BATCH_SIZE, Progress, RetentionReport, _older_than_secs
from turnstore.sync.repository import TurnStore

__all__ = ["DEFAULT_BATCH_SIZE", "Progress", "RetentionReport", "erase_tenant", "purge"]


def purge(
    store: TurnStore[Any],
    older_than: timedelta,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> RetentionReport:
    """Delete every terminal turn that ended at least ``older_than`` ago (database time),
    ``batch_size`` rows per transaction, until none is left; rows another transaction
    holds are skipped (a later run gets them). Running turns are never deleted."""
    secs = _older_than_secs(older_than)
    validate_retention_args(secs, batch_size)
    if dry_run:
        with store.connection() as conn:
            matched = store.turns.count_purgeable(conn, secs)
        return RetentionReport(0, 0, matched, True)
    deleted = batches = 0
    while True:
        with store.connection() as conn:
            count = store.turns.purge_turns(conn, secs, batch_size)
        if count == 0:
            break
        deleted += count
        batches += 1
        if progress is not None:
            progress(deleted)
        if count < batch_size:
            break
    return RetentionReport(deleted, batches, deleted, False)


def erase_tenant(
    store: TurnStore[Any],
    tenant_id: UUID,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> RetentionReport:
    """Delete every turn of ``tenant_id``, running ones included, ``batch_size`` rows per
    transaction. A batch waits for a row another transaction is writing (a keep-alive, a
    finalize) instead of skipping it, so when this returns the tenant has no turn left,
    unless new ones were started meanwhile (stop the tenant's traffic first)."""
    check_uuid("tenant_id", tenant_id)
    validate_retention_args(None, batch_size)
    if dry_run:
        with store.connection() as conn:
            matched = store.turns.count_tenant_turns(conn, tenant_id)
        return RetentionReport(0, 0, matched, True)
    deleted = batches = 0
    while True:
        with store.connection() as conn:
            count = store.turns.erase_tenant_turns(conn, tenant_id, batch_size)
        if count == 0:
            break
        deleted += count
        batches += 1
        if progress is not None:
            progress(deleted)
    return RetentionReport(deleted, batches, deleted, False)
