# WARNING: this file is generated from src/turnstore/testing/conformance/__init__.py by tools/async_to_sync.py; do not edit.
"""The behavioural conformance suite every ``TurnRepository`` backend must pass.

The tests drive the ``TurnStore`` / ``TurnRepository`` protocols only, through the
``turnstore_backend`` fixture of the turnstore pytest plugin, so the very same tests run on
PostgreSQL and on the in-memory fake. A host runs them against its own setup with one line
in a test module::

    from turnstore.sync.testing.conformance import *  # noqa: F403

Each WHERE condition of each method has a test that fails when the condition is dropped;
concurrency is exercised with real tasks, each on its own runner, ordered by events.
Time passes through ``BackendHarness.advance_time``, never through sleeping; tests that
need an exact instant (a predicate's boundary, two turns started at the same time) put the
clock there with ``BackendHarness.set_time``.

The concurrency tests hold up to ``CONCURRENCY + 2`` connections at once: a host pool
given to the suite needs at least that many.

One module per capability: ``create``, ``reads``, ``lookups`` (``get_turn``,
``list_turns``), ``writes``, ``orphans``, ``locking`` (``find_latest_for_update``),
``retention``, ``scope``, ``tenants``, ``timestamps``, ``touches`` (``touch_turns``),
``transactions`` and
``concurrency``; ``_support`` holds what they share. This package re-exports every test
class, so the one-line import above runs them all.
"""

from turnstore.sync.testing.conformance._support import (
    CONCURRENCY,
    bounded,
    complete_params,
    make_params,
    ordered_ids,
    preflight_params,
    terminal_params,
)
from turnstore.sync.testing.conformance.concurrency import TestConcurrency
from turnstore.sync.testing.conformance.create import TestCreateTurn
from turnstore.sync.testing.conformance.locking import TestFindLatestForUpdate
from turnstore.sync.testing.conformance.lookups import (
    TestGetTurn,
    TestListTurns,
    TestRequestFingerprint,
)
from turnstore.sync.testing.conformance.orphans import (
    TestCasFinalizeOrphan,
    TestFindOrphanCandidates,
)
from turnstore.sync.testing.conformance.reads import (
    TestFindByChatAndRequestId,
    TestFindLatestTurn,
    TestFindRunningByChatId,
)
from turnstore.sync.testing.conformance.retention import TestEraseTenant, TestPurge
from turnstore.sync.testing.conformance.scope import TestScopeIsolation
from turnstore.sync.testing.conformance.tenants import TestTenantsSharingAChatId
from turnstore.sync.testing.conformance.timestamps import TestTimestamps
from turnstore.sync.testing.conformance.touches import TestTouchTurns
from turnstore.sync.testing.conformance.transactions import TestTransactions
from turnstore.sync.testing.conformance.writes import (
    TestCasUpdateCompleted,
    TestCasUpdateState,
    TestIncrementToolCalls,
    TestSetAssistantMessageId,
    TestSoftDelete,
    TestUpdatePreflightFields,
    TestUpdateProgressAt,
    TestWritePredicates,
)

__all__ = [
    "CONCURRENCY",
    "TestCasFinalizeOrphan",
    "TestCasUpdateCompleted",
    "TestCasUpdateState",
    "TestConcurrency",
    "TestCreateTurn",
    "TestEraseTenant",
    "TestFindByChatAndRequestId",
    "TestFindLatestForUpdate",
    "TestFindLatestTurn",
    "TestFindOrphanCandidates",
    "TestFindRunningByChatId",
    "TestGetTurn",
    "TestIncrementToolCalls",
    "TestListTurns",
    "TestPurge",
    "TestRequestFingerprint",
    "TestScopeIsolation",
    "TestSetAssistantMessageId",
    "TestSoftDelete",
    "TestTenantsSharingAChatId",
    "TestTimestamps",
    "TestTouchTurns",
    "TestTransactions",
    "TestUpdatePreflightFields",
    "TestUpdateProgressAt",
    "TestWritePredicates",
    "bounded",
    "complete_params",
    "make_params",
    "ordered_ids",
    "preflight_params",
    "terminal_params",
]
