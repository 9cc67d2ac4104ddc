"""The kept reads of an instance's containers: when a pass may reuse one, when it must not."""

from __future__ import annotations

import pytest
from runtime_records import record as container_record

from kopflet.agent.runtime.instance_reads import InstanceReads
from kopflet.agent.runtime.labels import ContainerID
from kopflet.agent.runtime.records import ContainerRecord, RunState
from kopflet.api import UID

pytestmark = pytest.mark.unit

UID_A = UID("uid-a")
MAIN = ContainerID("c1")


def record(state: RunState = RunState.RUNNING) -> ContainerRecord:
    return container_record(MAIN, UID_A, state)


def kept(at: float = 100.0, *records: ContainerRecord) -> InstanceReads:
    reads = InstanceReads(max_age_seconds=60)
    reads.store(UID_A, records or (record(),), at=at)
    return reads


def test_a_read_is_reused_until_it_is_too_old() -> None:
    reads = kept(100.0)
    assert reads.fresh(UID_A, 100.0) == [record()]
    assert reads.fresh(UID_A, 159.9) == [record()]
    assert reads.fresh(UID_A, 160.0) is None
    assert reads.fresh(UID_A, 100.0) is None, "dropped once stale"


def test_a_clock_stepped_back_does_not_make_a_read_younger() -> None:
    assert kept(100.0).fresh(UID_A, 99.0) is None


def test_nothing_is_kept_of_an_instance_never_read() -> None:
    reads = InstanceReads(max_age_seconds=60)
    assert reads.fresh(UID_A, 1.0) is None
    assert reads.changed(UID_A, at=1.0), "a change of an unread instance needs its pass"


def test_an_engine_change_logged_before_the_read_was_asked_for_is_in_it() -> None:
    # Our own start, logged by the engine, then read back: the event changes nothing.
    reads = kept(100.0)
    assert not reads.changed(UID_A, at=99.5)
    assert reads.fresh(UID_A, 101.0) == [record()]


@pytest.mark.parametrize("at", [100.0, 100.5])
def test_an_engine_change_logged_at_or_after_the_read_was_asked_for_drops_it(at: float) -> None:
    reads = kept(100.0)
    assert reads.changed(UID_A, at=at)
    assert reads.fresh(UID_A, 101.0) is None


def test_a_change_told_while_the_read_is_in_flight_still_counts() -> None:
    # The event arrives before the worker stores the read it asked for at 100.
    reads = InstanceReads(max_age_seconds=60)
    assert reads.changed(UID_A, at=100.2)
    reads.store(UID_A, [record()], at=100.0)
    assert reads.fresh(UID_A, 101.0) is None
    # A read asked for after the change is good again.
    reads.store(UID_A, [record(RunState.EXITED)], at=100.3)
    assert reads.fresh(UID_A, 101.0) == [record(RunState.EXITED)]


def test_a_relist_that_shows_what_the_read_shows_changes_nothing() -> None:
    reads = kept(100.0)
    assert not reads.listed(UID_A, {MAIN: RunState.RUNNING}, at=130.0)
    assert reads.fresh(UID_A, 131.0) == [record()]


@pytest.mark.parametrize(
    "listed",
    [
        {MAIN: RunState.EXITED},
        {},
        {MAIN: RunState.RUNNING, ContainerID("c2"): RunState.CREATED},
    ],
    ids=["other state", "gone", "one more"],
)
def test_a_relist_that_shows_something_else_drops_the_read(
    listed: dict[ContainerID, RunState],
) -> None:
    reads = kept(100.0)
    assert reads.listed(UID_A, listed, at=130.0)
    assert reads.fresh(UID_A, 131.0) is None


def test_acting_drops_the_read_and_forgetting_drops_the_change_too() -> None:
    reads = kept(100.0)
    reads.acting(UID_A)
    assert reads.fresh(UID_A, 100.0) is None
    reads.changed(UID_A, at=200.0)
    reads.forget(UID_A)
    reads.store(UID_A, [record()], at=150.0)
    assert reads.fresh(UID_A, 151.0) == [record()], "a change of a forgotten life is gone"
    assert len(reads) == 1
