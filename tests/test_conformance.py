"""Run the shipped conformance suite on both backends, as a host would."""

from turnstore.testing.conformance import *  # noqa: F403
