"""The example's OpenTelemetry setup: turnstore's metrics at ``GET /metrics`` (Prometheus
text format), spans to the console when ``FASTAPI_CHAT_TRACE_CONSOLE=1``.

Everything degrades to nothing when the OpenTelemetry SDK or the Prometheus exporter is
not installed: turnstore then gets ``NO_TELEMETRY``.
"""

from __future__ import annotations

import os
from typing import Any

from turnstore.telemetry import NO_TELEMETRY, OpenTelemetry, Telemetry

__all__ = ["metrics_app", "setup_telemetry"]

_configured: Telemetry | None = None


def setup_telemetry(*, enabled: bool = True) -> Telemetry:
    """Install the global meter (and tracer) providers once per process; the
    ``Telemetry`` to give turnstore."""
    global _configured
    if not enabled:
        return NO_TELEMETRY
    if _configured is not None:
        return _configured
    try:
        from opentelemetry import metrics, trace
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        _configured = NO_TELEMETRY
        return _configured
    metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
    tracer_provider = TracerProvider()
    if os.environ.get("FASTAPI_CHAT_TRACE_CONSOLE") == "1":
        tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    _configured = OpenTelemetry()
    return _configured


def metrics_app() -> Any | None:
    """The ASGI app serving the Prometheus registry, or ``None`` without the client."""
    try:
        from prometheus_client import make_asgi_app
    except ImportError:
        return None
    return make_asgi_app()
