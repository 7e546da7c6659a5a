"""Telemetry: spans and metrics for the lifecycle, the keep-alive and the watchdog.

``TurnLifecycle``, ``KeepAlive`` (through the lifecycle) and ``OrphanWatchdog`` take a
``telemetry=`` argument. By default it is ``NO_TELEMETRY``, whose methods do nothing and
whose spans are one shared ``nullcontext``: a host that does not ask for telemetry pays a
few method calls per lifecycle call and imports nothing. ``OpenTelemetry()`` (the ``otel``
extra: ``pip install 'turnstore[otel]'``) reports through the OpenTelemetry API to whatever
tracer and meter providers the host configured. docs/telemetry.md lists the spans and the
metrics.

The ``Telemetry`` protocol is small on purpose: a span around each call, and one event
method per thing worth counting. A host with another metrics system implements it.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol
from uuid import UUID

__all__ = [
    "NO_TELEMETRY",
    "METRIC_NAMES",
    "SCAN_BUCKETS_SECS",
    "NoTelemetry",
    "OpenTelemetry",
    "Telemetry",
]

#: Attribute values a span accepts; UUIDs are reported as strings.
AttributeValue = str | bool | int | float | UUID

#: The metric instruments ``OpenTelemetry`` creates, by name.
METRIC_NAMES = (
    "turnstore.turns.started",
    "turnstore.turns.replayed",
    "turnstore.turns.rejected",
    "turnstore.turns.finalized",
    "turnstore.turns.mutated",
    "turnstore.keep_alive.writes",
    "turnstore.orphans.failed",
    "turnstore.watchdog.scan.duration",
    "turnstore.watchdog.leader",
)


#: Bucket boundaries (seconds) suggested for the scan duration histogram.
SCAN_BUCKETS_SECS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Telemetry(Protocol):
    """What the lifecycle, the keep-alive and the watchdog report. Methods must not block
    and must not raise."""

    def span(
        self, name: str, attributes: Mapping[str, AttributeValue] | None = None
    ) -> AbstractContextManager[object]:
        """A span around one call (``turnstore.begin_turn``, ``turnstore.keep_alive`` ...);
        an exception leaving it marks the span as failed."""
        ...

    def turn_start(self, kind: str, reason: str | None) -> None:
        """``begin_turn`` ended: ``kind`` is ``started``, ``replay`` or ``rejected``;
        ``reason`` is the rejection's code."""
        ...

    def turn_finalized(self, state: str, won: bool) -> None:
        """A complete/fail/cancel CAS to ``state``; ``won`` says whether this call made it."""
        ...

    def turn_mutated(self, kind: str, rejected: str | None) -> None:
        """A retry, edit or delete succeeded (``rejected`` is ``None``) or was refused with
        the error code ``rejected``."""
        ...

    def keep_alive_write(self, running: bool) -> None:
        """A keep-alive wrote ``last_progress_at``; ``running`` is False when the write
        found the turn finalized elsewhere."""
        ...

    def orphan_failed(self) -> None:
        """The watchdog failed an orphaned turn."""
        ...

    def watchdog_scan(self, seconds: float, detected: int, finalized: int) -> None:
        """A watchdog scan took ``seconds``, found ``detected`` candidates and failed
        ``finalized`` of them."""
        ...

    def leadership(self, is_leader: bool) -> None:
        """A watchdog acquired, confirmed, lost or released leadership."""
        ...


_NO_SPAN: AbstractContextManager[object] = nullcontext()


class NoTelemetry:
    """Reports nothing: the default. Every method returns at once."""

    __slots__ = ()

    def span(
        self, name: str, attributes: Mapping[str, AttributeValue] | None = None
    ) -> AbstractContextManager[object]:
        return _NO_SPAN

    def turn_start(self, kind: str, reason: str | None) -> None:
        pass

    def turn_finalized(self, state: str, won: bool) -> None:
        pass

    def turn_mutated(self, kind: str, rejected: str | None) -> None:
        pass

    def keep_alive_write(self, running: bool) -> None:
        pass

    def orphan_failed(self) -> None:
        pass

    def watchdog_scan(self, seconds: float, detected: int, finalized: int) -> None:
        pass

    def leadership(self, is_leader: bool) -> None:
        pass


NO_TELEMETRY = NoTelemetry()


def _attributes(attributes: Mapping[str, AttributeValue] | None) -> dict[str, Any] | None:
    if not attributes:
        return None
    return {k: str(v) if isinstance(v, UUID) else v for k, v in attributes.items()}


class OpenTelemetry:
    """``Telemetry`` through the OpenTelemetry API (the ``otel`` extra).

    Without arguments it uses the global tracer and meter providers the host set up
    (``trace.set_tracer_provider``, ``metrics.set_meter_provider``); tests pass their own.
    Metric attributes are low-cardinality only (state, reason, kind): ids go on spans.
    """

    def __init__(self, *, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        try:
            from opentelemetry import metrics, trace
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ImportError(
                "OpenTelemetry is not installed: pip install 'turnstore[otel]'"
            ) from exc
        self._trace = trace
        self._tracer = trace.get_tracer("turnstore", tracer_provider=tracer_provider)
        meter = metrics.get_meter("turnstore", meter_provider=meter_provider)
        self._started = meter.create_counter(
            "turnstore.turns.started", unit="{turn}", description="turns begin_turn started"
        )
        self._replayed = meter.create_counter(
            "turnstore.turns.replayed",
            unit="{turn}",
            description="begin_turn calls that replayed a completed turn",
        )
        self._rejected = meter.create_counter(
            "turnstore.turns.rejected",
            unit="{call}",
            description="begin_turn, retry, edit and delete calls refused, by reason",
        )
        self._finalized = meter.create_counter(
            "turnstore.turns.finalized",
            unit="{turn}",
            description="turns this process finalized (CAS won), by state",
        )
        self._mutated = meter.create_counter(
            "turnstore.turns.mutated", unit="{turn}", description="retries, edits and deletes"
        )
        self._keep_alive = meter.create_counter(
            "turnstore.keep_alive.writes",
            unit="{write}",
            description="last_progress_at writes; running=false: the turn had ended",
        )
        self._orphans = meter.create_counter(
            "turnstore.orphans.failed",
            unit="{turn}",
            description="orphaned turns the watchdog failed",
        )
        scan = ("turnstore.watchdog.scan.duration", "s", "watchdog scan duration")
        try:
            self._scan = meter.create_histogram(
                *scan, explicit_bucket_boundaries_advisory=SCAN_BUCKETS_SECS
            )
        except TypeError:  # pragma: no cover - opentelemetry-api older than the advisory
            self._scan = meter.create_histogram(*scan)
        self._leader = meter.create_gauge(
            "turnstore.watchdog.leader",
            unit="1",
            description="1 while this process's watchdog leads, else 0",
        )

    def span(
        self, name: str, attributes: Mapping[str, AttributeValue] | None = None
    ) -> AbstractContextManager[object]:
        return self._tracer.start_as_current_span(name, attributes=_attributes(attributes))

    def _annotate(self, key: str, value: str | bool) -> None:
        self._trace.get_current_span().set_attribute(key, value)

    def turn_start(self, kind: str, reason: str | None) -> None:
        self._annotate("turnstore.start.kind", kind)
        if kind == "started":
            self._started.add(1)
        elif kind == "replay":
            self._replayed.add(1)
        else:
            self._annotate("turnstore.reject.reason", reason or "unknown")
            self._rejected.add(1, {"reason": reason or "unknown", "operation": "begin"})

    def turn_finalized(self, state: str, won: bool) -> None:
        self._annotate("turnstore.finalize.won", won)
        if won:
            self._finalized.add(1, {"state": state})

    def turn_mutated(self, kind: str, rejected: str | None) -> None:
        if rejected is None:
            self._mutated.add(1, {"kind": kind})
        else:
            self._annotate("turnstore.reject.reason", rejected)
            self._rejected.add(1, {"reason": rejected, "operation": kind})

    def keep_alive_write(self, running: bool) -> None:
        self._keep_alive.add(1, {"running": running})

    def orphan_failed(self) -> None:
        self._orphans.add(1)

    def watchdog_scan(self, seconds: float, detected: int, finalized: int) -> None:
        self._scan.record(seconds)

    def leadership(self, is_leader: bool) -> None:
        self._leader.set(1 if is_leader else 0)
