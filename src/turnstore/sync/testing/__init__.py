"""Test helpers of the sync API: its backend harnesses (``turnstore.sync.testing.backends``)
and the conformance suite (``turnstore.sync.testing.conformance``), both generated from
their asyncio twins; clocks are shared (``turnstore.testing.ManualClock``)."""

__all__: list[str] = []
