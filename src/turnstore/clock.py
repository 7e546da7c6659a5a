"""Where "database time" comes from when no database server reads it.

The in-memory store stamps every write with one reading of a ``Clock`` per statement, as
PostgreSQL stamps it with one ``clock_timestamp()``. ``MonotonicClock`` makes any source of
time strictly increasing, so turns created later sort later even when two readings fall in
the same microsecond; ``SystemClock`` is the wall clock made so, and
``turnstore.testing.ManualClock`` the one a test moves by hand.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Protocol

__all__ = ["TICK", "Clock", "MonotonicClock", "SystemClock"]

#: The resolution of ``timestamptz``, and the least step between two clock readings.
TICK = timedelta(microseconds=1)


class Clock(Protocol):
    """Where the in-memory store reads "database time"."""

    def now(self) -> datetime:
        """The current instant, timezone-aware, later than any earlier reading."""
        ...


class MonotonicClock:
    """A clock whose readings strictly increase, like PostgreSQL's ``clock_timestamp()``.

    Each reading is at least one microsecond after the previous one, so turns created later
    sort later even when two readings fall in the same microsecond. Subclasses say where
    raw time comes from.
    """

    def __init__(self) -> None:
        self._last: datetime | None = None

    @property
    def last(self) -> datetime | None:
        """The latest reading handed out, if any."""
        return self._last

    def _read(self) -> datetime:
        raise NotImplementedError

    def now(self) -> datetime:
        reading = self._read()
        if self._last is not None and reading <= self._last:
            reading = self._last + TICK
        self._last = reading
        return reading


class SystemClock(MonotonicClock):
    """The wall clock (UTC), made strictly increasing: the default of ``InMemoryStore``."""

    def _read(self) -> datetime:
        return datetime.now(timezone.utc)
