"""A Workload's status: counts, Available, Progressing and the progress deadline."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from test_controller_rollout import NOW, make_instance, make_workload

from kopflet.api import Condition, WorkloadStatus, find_condition, format_timestamp
from kopflet.controller.template_hash import template_hash
from kopflet.controller.workload_status import (
    REASON_DEADLINE_EXCEEDED,
    REASON_REVISION_AVAILABLE,
    REASON_REVISION_UPDATED,
    compute_status,
)

pytestmark = pytest.mark.unit


def test_complete_workload_reports_counts_and_both_conditions_true() -> None:
    wl = make_workload(replicas=2)
    result = compute_status(
        wl,
        [make_instance(wl), make_instance(wl)],
        revision=template_hash(wl.spec.template),
        now=NOW,
    )
    status = result.status
    assert (
        status.replicas,
        status.ready_replicas,
        status.available_replicas,
        status.updated_replicas,
        status.unavailable_replicas,
    ) == (2, 2, 2, 2, 0)
    assert status.ready_summary == "2/2" and status.selector == "app=web"
    assert status.observed_generation == 1
    available = find_condition(status.conditions, "Available")
    progressing = find_condition(status.conditions, "Progressing")
    assert available is not None and available.status == "True"
    assert progressing is not None and progressing.reason == REASON_REVISION_AVAILABLE
    assert [e.reason for e in result.events] == ["RolloutComplete"]


def test_missing_availability_sets_available_false_with_the_numbers() -> None:
    wl = make_workload(replicas=4)  # 25% unavailable allowed: 3 needed
    result = compute_status(
        wl,
        [make_instance(wl), make_instance(wl, ready=False)],
        revision=template_hash(wl.spec.template),
        now=NOW,
    )
    available = find_condition(result.status.conditions, "Available")
    assert available is not None and available.status == "False"
    assert "1 of 4 available, 3 needed" in (available.message or "")


def test_progress_moves_the_progressing_time_and_asks_to_look_again_at_the_deadline() -> None:
    wl = make_workload(replicas=2)
    revision = template_hash(wl.spec.template)
    first = compute_status(wl, [make_instance(wl, ready=False)], revision=revision, now=NOW)
    progressing = find_condition(first.status.conditions, "Progressing")
    assert progressing is not None and progressing.reason == REASON_REVISION_UPDATED
    assert progressing.last_transition_time == format_timestamp(NOW)
    assert first.requeue_after == 600

    later = NOW + timedelta(seconds=100)
    wl2 = replace(wl, status=first.status)
    second = compute_status(wl2, [make_instance(wl, ready=False)], revision=revision, now=later)
    same = find_condition(second.status.conditions, "Progressing")
    assert same == progressing  # no progress: the clock keeps running from the last one
    assert second.requeue_after == pytest.approx(500)


def test_no_progress_past_the_deadline_sets_progressing_false_once() -> None:
    wl = make_workload(replicas=2)
    revision = template_hash(wl.spec.template)
    stuck_since = NOW - timedelta(seconds=601)
    status = WorkloadStatus(
        observed_generation=1,
        replicas=1,
        ready_replicas=0,
        available_replicas=0,
        updated_replicas=1,
        unavailable_replicas=2,
        conditions=(
            Condition(
                type="Progressing",
                status="True",
                reason=REASON_REVISION_UPDATED,
                last_transition_time=format_timestamp(stuck_since),
            ),
        ),
    )
    result = compute_status(
        replace(wl, status=status), [make_instance(wl, ready=False)], revision=revision, now=NOW
    )
    progressing = find_condition(result.status.conditions, "Progressing")
    assert progressing is not None
    assert (progressing.status, progressing.reason) == ("False", REASON_DEADLINE_EXCEEDED)
    assert [e.reason for e in result.events] == [REASON_DEADLINE_EXCEEDED]

    again = compute_status(
        replace(wl, status=result.status),
        [make_instance(wl, ready=False)],
        revision=revision,
        now=NOW + timedelta(seconds=5),
    )
    assert again.events == () and again.status == result.status


def test_a_new_generation_restarts_the_deadline() -> None:
    wl = make_workload(replicas=1)
    revision = template_hash(wl.spec.template)
    old = WorkloadStatus(
        observed_generation=1,
        conditions=(
            Condition(
                type="Progressing",
                status="False",
                reason=REASON_DEADLINE_EXCEEDED,
                last_transition_time=format_timestamp(NOW - timedelta(hours=1)),
            ),
        ),
    )
    bumped = replace(wl, metadata=replace(wl.metadata, generation=2), status=old)
    result = compute_status(bumped, [], revision=revision, now=NOW)
    progressing = find_condition(result.status.conditions, "Progressing")
    assert progressing is not None and progressing.status == "True"
    assert progressing.last_transition_time == format_timestamp(NOW)
