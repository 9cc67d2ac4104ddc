"""Leader election decisions: who creates, renews, takes over, or waits."""

from __future__ import annotations

import pytest

from kopflet.controller.leader_election import ElectionTiming, LeaseRecord, decide

pytestmark = pytest.mark.unit

ME = "host_1"


def record(holder: str | None, duration: int = 8) -> LeaseRecord:
    return LeaseRecord(holder=holder, lease_duration_seconds=duration, resource_version="7")


@pytest.mark.parametrize(
    ("lease", "unchanged_for", "action"),
    [
        (None, 0.0, "create"),
        (record(ME), 100.0, "renew"),
        (record(""), 0.0, "acquire"),  # released by a leader that stopped cleanly
        (record("host_2"), 7.9, "wait"),  # the leader may still renew
        (record("host_2"), 8.0, "acquire"),  # not renewed for a whole lease duration
    ],
)
def test_decide(lease: LeaseRecord | None, unchanged_for: float, action: str) -> None:
    assert decide(lease, identity=ME, unchanged_for=unchanged_for) == action


def test_a_dead_leader_is_replaced_well_within_fifteen_seconds() -> None:
    timing = ElectionTiming()
    worst_case = timing.lease_duration + timing.retry_period
    assert worst_case <= 10
    assert timing.renew_deadline < timing.lease_duration
