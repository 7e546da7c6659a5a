"""Helpers for testing code that uses turnstore: clocks, database provisioning, and the
conformance suite that every backend must pass."""

from turnstore.testing.clock import ManualClock

__all__ = ["ManualClock"]
