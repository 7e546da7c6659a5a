"""Telemetry: a scenario on the in-memory store produces the spans and metrics it must
(OpenTelemetry SDK in-memory reader and exporter; no server needed)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lifecycle_support import Chat
from turnstore.errors import TurnNotFoundError
from turnstore.lifecycle import StartKind, TurnLifecycle
from turnstore.memory import InMemoryStore
from turnstore.settings import KeepAliveSettings, WatchdogSettings
from turnstore.telemetry import METRIC_NAMES, NO_TELEMETRY, OpenTelemetry
from turnstore.testing import ManualClock
from turnstore.watchdog import OrphanWatchdog

Points = dict[tuple[str, frozenset[tuple[str, Any]]], float]


class Recorded:
    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.telemetry = OpenTelemetry(
            tracer_provider=tracer_provider,
            meter_provider=MeterProvider(metric_readers=[self.reader]),
        )

    def points(self) -> Points:
        """(metric, attributes) -> value (a counter's sum, a gauge's last value, a
        histogram's count)."""
        found: Points = {}
        data = self.reader.get_metrics_data()
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        attrs = frozenset((point.attributes or {}).items())
                        value = getattr(point, "value", None)
                        if value is None:
                            value = point.count  # type: ignore[union-attr]
                        found[(metric.name, attrs)] = value
        return found

    def span_names(self) -> list[str]:
        return [span.name for span in self.exporter.get_finished_spans()]


@pytest.fixture
def recorded() -> Recorded:
    return Recorded()


def attrs(**kwargs: Any) -> frozenset[tuple[str, Any]]:
    return frozenset(kwargs.items())


async def test_a_scenario_produces_its_metrics_and_spans(recorded: Recorded) -> None:
    clock = ManualClock()
    store = InMemoryStore(clock)
    lifecycle = TurnLifecycle(store, telemetry=recorded.telemetry)
    chat, other = Chat(), Chat()

    first = await lifecycle.begin_turn(chat.scope, chat.params(request_id := uuid.uuid4()))
    assert first.kind is StartKind.STARTED
    assert first.turn is not None
    busy = await lifecycle.begin_turn(chat.scope, chat.params())
    assert busy.kind is StartKind.REJECTED
    settings = KeepAliveSettings(interval_secs=1, heartbeat=False, batched=False)
    async with lifecycle.keep_alive(chat.scope, first.turn.id, settings=settings) as ka:
        assert await ka.touch()
    done = await lifecycle.complete_turn(chat.scope, first.turn, uuid.uuid4())
    assert done.won
    lost = await lifecycle.cancel_turn(chat.scope, first.turn)
    assert not lost.won
    replay = await lifecycle.begin_turn(chat.scope, chat.params(request_id))
    assert replay.kind is StartKind.REPLAY
    with pytest.raises(TurnNotFoundError):
        await lifecycle.delete_turn(
            chat.scope, chat.tenant_id, chat.chat_id, uuid.uuid4(), chat.user_id
        )
    await lifecycle.delete_turn(chat.scope, chat.tenant_id, chat.chat_id, request_id, chat.user_id)

    orphan = await lifecycle.begin_turn(other.scope, other.params())
    assert orphan.kind is StartKind.STARTED
    clock.advance(120)
    watchdog = OrphanWatchdog(
        store, WatchdogSettings(orphan_timeout_secs=60), telemetry=recorded.telemetry
    )
    report = await watchdog.run_once()
    assert len(report.finalized) == 1

    points = recorded.points()
    assert points[("turnstore.turns.started", attrs())] == 2
    assert points[("turnstore.turns.replayed", attrs())] == 1
    rejected = (
        "turnstore.turns.rejected",
        attrs(reason="generation_in_progress", operation="begin"),
    )
    assert points[rejected] == 1
    assert (
        points[("turnstore.turns.rejected", attrs(reason="turn_not_found", operation="delete"))]
        == 1
    )
    assert points[("turnstore.turns.finalized", attrs(state="completed"))] == 1
    assert ("turnstore.turns.finalized", attrs(state="cancelled")) not in points  # lost CAS
    assert points[("turnstore.turns.mutated", attrs(kind="delete"))] == 1
    assert points[("turnstore.keep_alive.writes", attrs(running=True))] == 1
    assert points[("turnstore.orphans.failed", attrs())] == 1
    assert points[("turnstore.watchdog.scan.duration", attrs())] == 1  # one scan recorded
    # run_once took leadership for the scan and gave it back.
    assert points[("turnstore.watchdog.leader", attrs())] == 0
    assert {name for name, _ in points} <= set(METRIC_NAMES)

    names = recorded.span_names()
    assert names.count("turnstore.begin_turn") == 4
    for name in (
        "turnstore.keep_alive",
        "turnstore.complete_turn",
        "turnstore.cancel_turn",
        "turnstore.delete_turn",
        "turnstore.watchdog.scan",
        "turnstore.finalize_orphan",
    ):
        assert name in names, name


async def test_a_span_records_the_start_outcome_and_a_failed_call(recorded: Recorded) -> None:
    store = InMemoryStore()
    lifecycle = TurnLifecycle(store, telemetry=recorded.telemetry)
    chat = Chat()
    await lifecycle.begin_turn(chat.scope, chat.params())
    await lifecycle.begin_turn(chat.scope, chat.params())
    with pytest.raises(TurnNotFoundError):
        await lifecycle.retry_turn(
            chat.scope, chat.tenant_id, chat.chat_id, uuid.uuid4(), chat.user_id
        )
    spans = recorded.exporter.get_finished_spans()
    started, rejected, retry = spans
    assert started.attributes is not None
    assert rejected.attributes is not None
    assert started.attributes["turnstore.start.kind"] == "started"
    assert started.attributes["turnstore.chat_id"] == str(chat.chat_id)
    assert rejected.attributes["turnstore.reject.reason"] == "generation_in_progress"
    assert retry.name == "turnstore.retry_turn"
    assert not retry.status.is_ok


def test_the_default_is_no_telemetry() -> None:
    store = InMemoryStore()
    assert TurnLifecycle(store).telemetry is NO_TELEMETRY
    with NO_TELEMETRY.span("x", {"a": 1}) as span:
        assert span is None
