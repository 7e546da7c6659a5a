"""``ManualClock.set``: the fake's half of ``BackendHarness.set_time``, which the
conformance suite's boundary and tie-break tests rely on."""

from datetime import datetime, timedelta, timezone

import pytest

from turnstore.errors import InvalidParameterError
from turnstore.testing.clock import ManualClock


def test_manual_clock_set_goes_back_exactly_then_ticks() -> None:
    """``BackendHarness.set_time`` on the fake: the next reading is the set instant, even an
    earlier one, and readings after it still strictly increase."""
    start = datetime(2030, 1, 1, tzinfo=timezone.utc)
    clock = ManualClock(start)
    clock.now()
    earlier = start - timedelta(hours=1)
    clock.set(earlier)
    assert clock.now() == earlier
    assert clock.now() == earlier + timedelta(microseconds=1)


def test_manual_clock_set_refuses_a_naive_datetime() -> None:
    clock = ManualClock()
    with pytest.raises(InvalidParameterError):
        clock.set(datetime(2030, 1, 1))
