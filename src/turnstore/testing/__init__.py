"""Helpers for testing code that uses turnstore: clocks, database provisioning, and the
conformance suite that every backend must pass."""
