"""Helpers for testing code that uses turnstore: clocks, backend harnesses, the pytest
plugin and the conformance suite that every backend must pass (throwaway PostgreSQL servers
and databases come from ``turnstore.embedded``)."""

from turnstore.testing.clock import ManualClock

__all__ = ["ManualClock"]
