"""The lease election's timings are validated before anything runs: a renewal well inside
the lease, a positive margin below it."""

from __future__ import annotations

from typing import Any

import pytest

from turnstore.errors import InvalidParameterError
from turnstore.postgres import DEFAULT_LEASE_SECS, DEFAULT_RENEW_INTERVAL_SECS, LeaseElection


def no_connection() -> Any:
    raise AssertionError("no statement runs in these tests")


def test_defaults() -> None:
    election = LeaseElection(no_connection)
    assert election.lease_secs == DEFAULT_LEASE_SECS == 30
    assert election.renew_interval_secs == DEFAULT_RENEW_INTERVAL_SECS == 10
    assert election.margin_secs == 3
    assert not election.is_leader


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lease_secs": 0},
        {"lease_secs": -1},
        {"renew_interval_secs": 0},
        {"margin_secs": 0},
        {"margin_secs": 30},
        # Renewal must fit twice in the lease minus the margin.
        {"lease_secs": 10, "renew_interval_secs": 5, "margin_secs": 1},
        {"lease_secs": 10, "renew_interval_secs": 4.6, "margin_secs": 1},
    ],
)
def test_bad_timings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidParameterError):
        LeaseElection(no_connection, **kwargs)


def test_the_tightest_accepted_timings() -> None:
    election = LeaseElection(no_connection, lease_secs=10, renew_interval_secs=4.5, margin_secs=1)
    assert election.renew_interval_secs == 4.5
