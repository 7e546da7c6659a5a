"""The in-memory backend: the same protocol, results, errors and ordering as PostgreSQL."""

from turnstore.memory.database import (
    Clock,
    InMemoryConnection,
    InMemoryStore,
    InMemoryTurnRepository,
    MonotonicClock,
    SystemClock,
)

__all__ = [
    "Clock",
    "InMemoryConnection",
    "InMemoryStore",
    "InMemoryTurnRepository",
    "MonotonicClock",
    "SystemClock",
]
