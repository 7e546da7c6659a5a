"""``ManualClock``: time that only moves when a test says so.

The in-memory store reads its clock once per call, the way PostgreSQL reads
``clock_timestamp()`` once per statement. A test advances the clock to make turns
orphaned without sleeping, or sets it to an exact instant to hit a boundary.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

from turnstore.clock import MonotonicClock
from turnstore.errors import InvalidParameterError

__all__ = ["ManualClock"]


class ManualClock(MonotonicClock):
    """A clock that stands still until ``advance`` or ``set`` is called.

    Like ``clock_timestamp()``, each reading is at least one microsecond after the previous
    one (unless ``set`` steps the clock back), so turns created later sort later even
    while the clock stands still. ``start`` defaults to the wall-clock time at construction;
    it must be timezone-aware.
    """

    def __init__(self, start: datetime | None = None) -> None:
        if start is None:
            start = datetime.now(timezone.utc)
        elif start.tzinfo is None or start.utcoffset() is None:
            raise InvalidParameterError("ManualClock start must be a timezone-aware datetime")
        super().__init__()
        self._current = start.astimezone(timezone.utc)

    def _read(self) -> datetime:
        return self._current

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, counted from the latest reading.

        Counting from the latest reading (not from the last set time) guarantees that
        every timestamp already handed out is at least ``seconds`` old afterwards.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise InvalidParameterError(f"seconds must be a number, got {seconds!r}")
        if not math.isfinite(seconds) or seconds < 0:
            raise InvalidParameterError(
                f"seconds must be finite and non-negative (time only moves forward), "
                f"got {seconds!r}"
            )
        base = self._current if self.last is None else max(self._current, self.last)
        self._current = base + timedelta(seconds=seconds)

    def set(self, at: datetime) -> None:
        """Put the clock at ``at``: the next reading is exactly ``at``, even when that is
        earlier than a reading already handed out (a host's clock stepping back).

        Readings after it go on one microsecond apart while the clock stands still.
        """
        if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
            raise InvalidParameterError(
                f"ManualClock.set needs a timezone-aware datetime, got {at!r}"
            )
        self._current = at.astimezone(timezone.utc)
        # Forget the readings handed out so far: the strictly-increasing guarantee
        # restarts from ``at``.
        self._last = None
