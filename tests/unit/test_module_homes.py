"""Names that moved to a module of their own stay importable from where they were, as the
very same objects (no server needed)."""

from __future__ import annotations

import importlib

import pytest

import turnstore.clock
import turnstore.ids
import turnstore.keepalive
import turnstore.settings

MOVED = [
    ("turnstore.lifecycle", "new_uuid7", turnstore.ids),
    ("turnstore.lifecycle", "KeepAliveSettings", turnstore.settings),
    ("turnstore.lifecycle", "KeepAlive", turnstore.keepalive),
    ("turnstore.watchdog", "WatchdogSettings", turnstore.settings),
    ("turnstore.watchdog", "OrphanTimeoutSecs", turnstore.settings),
    ("turnstore.watchdog", "DEFAULT_ORPHAN_TIMEOUT_SECS", turnstore.settings),
    ("turnstore.watchdog", "MIN_ORPHAN_TIMEOUT_SECS", turnstore.settings),
    ("turnstore.watchdog", "MAX_ORPHAN_TIMEOUT_SECS", turnstore.settings),
    ("turnstore.memory", "Clock", turnstore.clock),
    ("turnstore.memory", "MonotonicClock", turnstore.clock),
    ("turnstore.memory", "SystemClock", turnstore.clock),
]


@pytest.mark.parametrize(("old_home", "name", "new_home"), MOVED)
def test_a_moved_name_is_still_exported_from_its_old_home(
    old_home: str, name: str, new_home: object
) -> None:
    module = importlib.import_module(old_home)
    assert name in module.__all__
    assert getattr(module, name) is getattr(new_home, name)


def test_the_manual_clock_is_a_monotonic_clock_of_the_shared_clock_module() -> None:
    from turnstore.testing import ManualClock

    assert issubclass(ManualClock, turnstore.clock.MonotonicClock)
