"""Run the sync conformance suite (generated from the asyncio one) on both sync backends."""

from turnstore.sync.testing.conformance import *  # noqa: F403
