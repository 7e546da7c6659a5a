# WARNING: this file is generated from src/turnstore/watchdog.py by tools/async_to_sync.py; do not edit.
"""The orphan watchdog: fails turns whose process died mid-stream.

A turn is an orphan when it still runs but its ``last_progress_at`` is older than the
timeout: the process streaming it crashed, or lost its database. ``OrphanWatchdog`` scans
for candidates, then finalizes each one with ``cas_finalize_orphan`` in its own transaction,
which re-checks every orphan predicate, so a turn whose keep-alive renewed its progress
after the scan is left alone. The host's settlement hook (refund a quota reservation, emit
an outbox event) runs in that transaction, only when the CAS was won.

One watchdog per database scans at a time. The store decides how
(``TurnStore.leader_election``): on PostgreSQL the leader holds a lease row it renews, on
the in-memory fake an in-process lock per store plays the part. This module imports no
database driver.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic
from uuid import UUID

from turnstore._compat_sync import Task, spawn, wait_event, wait_tasks
from turnstore.model import Turn
from turnstore.scope import AccessScope
from turnstore.settings import (
    DEFAULT_ORPHAN_TIMEOUT_SECS,
    MAX_ORPHAN_TIMEOUT_SECS,
    MIN_ORPHAN_TIMEOUT_SECS,
    OrphanTimeoutSecs,
    WatchdogSettings,
)
from turnstore.sync.election import LeaderElection
from turnstore.sync.repository import RunnerT, TurnStore
from turnstore.telemetry import NO_TELEMETRY, Telemetry
from turnstore.validation import check_callable, check_instance
from turnstore.watchdog import SweepReport, WatchdogMetrics

__all__ = [
    "DEFAULT_ORPHAN_TIMEOUT_SECS",
    "MAX_ORPHAN_TIMEOUT_SECS",
    "MIN_ORPHAN_TIMEOUT_SECS",
    "OrphanTimeoutSecs",
    "OrphanWatchdog",
    "SettlementHook",
    "SweepReport",
    "WatchdogMetrics",
    "WatchdogSettings",
]
logger = logging.getLogger("turnstore.watchdog")
SettlementHook = Callable[[RunnerT, Turn], None]


class OrphanWatchdog(Generic[RunnerT]):
    """Finds orphaned turns and fails them with ``orphan_timeout``, once, as the leader.

    ``run_once()`` runs one scan (the CLI's ``turnstore sweep --once``);
    ``start()``/``stop()`` or ``async with`` run the loop every ``scan_interval_secs``.
    """

    def __init__(
        self,
        store: TurnStore[RunnerT],
        settings: WatchdogSettings | None = None,
        *,
        settlement_hook: SettlementHook[RunnerT] | None = None,
        metrics: WatchdogMetrics | None = None,
        election: LeaderElection | None = None,
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        if settings is not None:
            check_instance("settings", settings, WatchdogSettings)
        if settlement_hook is not None:
            check_callable("settlement_hook", settlement_hook)
        if metrics is not None:
            check_instance("metrics", metrics, WatchdogMetrics)
        self._store = store
        self._settings = settings if settings is not None else WatchdogSettings()
        self._hook = settlement_hook
        self._metrics = metrics if metrics is not None else WatchdogMetrics()
        self._election = election if election is not None else store.leader_election()
        self._sweep_lock = threading.Lock()
        self._task: Task[None] | None = None
        self._stopping = threading.Event()
        self._telemetry = telemetry

    @property
    def settings(self) -> WatchdogSettings:
        return self._settings

    @property
    def election(self) -> LeaderElection:
        """The election this watchdog takes part in (the store's unless one was given)."""
        return self._election

    @property
    def is_leader(self) -> bool:
        return self._election.is_leader

    @property
    def running(self) -> bool:
        return self._task is not None and (not self._task.done())

    def elect(self) -> bool:
        """Become or confirm being the leader; False while another instance leads."""
        leader = self._election.acquire()
        self._telemetry.leadership(leader)
        return leader

    def run_once(self) -> SweepReport:
        """One scan, if this instance is or can become the leader.

        Outside the running loop, leadership taken for this scan is released after it, so a
        one-off sweep (the CLI) leaves nothing behind.
        """
        held = self._election.is_leader
        if not self.elect():
            return SweepReport(leader=False)
        try:
            with self._sweep_lock:
                return self._sweep()
        finally:
            if not held and (not self.running):
                self._election.release()
                self._telemetry.leadership(False)

    def _sweep(self) -> SweepReport:
        with self._telemetry.span("turnstore.watchdog.scan"):
            report = self._sweep_in()
        for _ in report.finalized:
            self._telemetry.orphan_failed()
        self._telemetry.watchdog_scan(
            report.duration_secs, len(report.detected), len(report.finalized)
        )
        return report

    def _sweep_in(self) -> SweepReport:
        settings = self._settings
        timeout = settings.orphan_timeout_secs
        turns = self._store.turns
        started = time.perf_counter()
        with self._store.connection() as runner:
            candidates = turns.find_orphan_candidates(runner, timeout, settings.batch_limit)
        for turn in candidates:
            logger.info("orphan candidate: turn %s of chat %s", turn.id, turn.chat_id)
            self._notify(self._metrics.orphan_detected, turn)
        finalized: list[Turn] = []
        errors: list[UUID] = []
        for candidate in candidates:
            try:
                with self._telemetry.span(
                    "turnstore.finalize_orphan", {"turnstore.turn_id": candidate.id}
                ):
                    final = self._finalize(candidate)
            except Exception:
                logger.exception("finalizing orphan turn %s failed; rolled back", candidate.id)
                errors.append(candidate.id)
                continue
            if final is None:
                logger.info("turn %s is no longer an orphan; left alone", candidate.id)
                continue
            logger.info("orphan turn %s failed with orphan_timeout", final.id)
            finalized.append(final)
            self._notify(self._metrics.orphan_finalized, final)
        duration = time.perf_counter() - started
        self._notify(self._metrics.scan_duration, duration)
        return SweepReport(
            leader=True,
            detected=tuple(candidates),
            finalized=tuple(finalized),
            settlement_errors=tuple(errors),
            duration_secs=duration,
        )

    @staticmethod
    def _notify(hook: Callable[[Any], None], value: object) -> None:
        """Call a metrics hook; a hook that raises is logged and never stops the sweep."""
        try:
            hook(value)
        except Exception:
            logger.exception("watchdog metrics hook %s raised; ignored", hook.__name__)

    def _finalize(self, candidate: Turn) -> Turn | None:
        """CAS one candidate and settle it in one transaction; the row if this call won."""
        turns = self._store.turns
        with self._store.transaction() as runner:
            won = turns.cas_finalize_orphan(
                runner,
                candidate.id,
                self._settings.orphan_timeout_secs,
                tenant_id=candidate.tenant_id,
            )
            if won != 1:
                return None
            final = turns.find_by_chat_and_request_id(
                runner,
                AccessScope.allow_all(),
                candidate.tenant_id,
                candidate.chat_id,
                candidate.request_id,
            )
            assert final is not None, "the CAS just updated this row"
            if self._hook is not None:
                self._hook(runner, final)
            return final

    def start(self) -> None:
        """Run the scan loop in a background task (no-op if it already runs)."""
        if self.running:
            return
        self._stopping = threading.Event()
        self._task = spawn(self._loop, name="turnstore-orphan-watchdog")

    def stop(self) -> None:
        """Stop the loop after the current scan and give leadership up.

        If ``stop()`` itself is cancelled while the scan is still running, the loop is
        cancelled too; either way no task and no leader connection is left behind.
        """
        task, self._task = (self._task, None)
        self._stopping.set()
        try:
            if task is not None:
                wait_tasks([task])
        finally:
            if task is not None:
                if not task.done():
                    task.cancel()
                    wait_tasks([task])
                if not task.cancelled() and task.exception() is not None:
                    logger.error("orphan watchdog loop failed", exc_info=task.exception())
            self._election.release()
            self._telemetry.leadership(False)

    def __enter__(self) -> OrphanWatchdog[RunnerT]:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                if self.elect() and (not self._stopping.is_set()):
                    with self._sweep_lock:
                        self._sweep()
            except Exception:
                logger.exception("orphan scan failed; retrying at the next interval")
            wait_event(self._stopping, self._settings.scan_interval_secs)
