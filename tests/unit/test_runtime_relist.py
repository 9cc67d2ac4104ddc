"""PLEG transitions and relist age."""

from __future__ import annotations

import asyncio
import math

import pytest
from runtime_records import record

from kopflet.agent.runtime.fake_runtime import FakeRuntime
from kopflet.agent.runtime.labels import ContainerID
from kopflet.agent.runtime.records import ContainerRecord, RunState
from kopflet.agent.runtime.relist import (
    LifecycleEvent,
    LifecycleKind,
    Relister,
    diff_records,
    transition,
)
from kopflet.api import UID

pytestmark = pytest.mark.unit

K = LifecycleKind


@pytest.mark.parametrize(
    ("old", "new", "kinds"),
    [
        (None, RunState.RUNNING, (K.STARTED,)),
        (None, RunState.CREATED, (K.CHANGED,)),
        (RunState.CREATED, RunState.RUNNING, (K.STARTED,)),
        (RunState.RUNNING, RunState.EXITED, (K.DIED,)),
        (RunState.RUNNING, None, (K.DIED, K.REMOVED)),
        (RunState.EXITED, None, (K.REMOVED,)),
        (RunState.RUNNING, RunState.RUNNING, ()),
        (None, None, ()),
    ],
)
def test_transition_between_two_observations(
    old: RunState | None, new: RunState | None, kinds: tuple[LifecycleKind, ...]
) -> None:
    assert transition(old, new) == kinds


def test_diff_names_the_instance_of_every_changed_container() -> None:
    old = {ContainerID("a"): record("a", "u1", RunState.RUNNING)}
    new = {ContainerID("b"): record("b", "u2", RunState.RUNNING)}
    assert diff_records(old, new) == [
        LifecycleEvent(instance_uid=UID("u1"), container_id=ContainerID("a"), kind=K.DIED),
        LifecycleEvent(instance_uid=UID("u1"), container_id=ContainerID("a"), kind=K.REMOVED),
        LifecycleEvent(instance_uid=UID("u2"), container_id=ContainerID("b"), kind=K.STARTED),
    ]


def test_relist_age_grows_while_the_engine_is_down() -> None:
    now = [100.0]

    class Clock:
        def now(self) -> float:
            return now[0]

        async def sleep(self, seconds: float) -> None:
            now[0] += seconds

    runtime = FakeRuntime(now=lambda: now[0])
    relister = Relister(runtime, Clock())
    assert relister.age(now[0]) == math.inf and not relister.healthy(now[0], threshold_seconds=5)
    asyncio.run(relister.relist())
    now[0] = 104.0
    assert relister.age(now[0]) == 4.0 and relister.healthy(now[0], threshold_seconds=5)
    runtime.available = False
    with pytest.raises(Exception, match="down"):
        asyncio.run(relister.relist())
    now[0] = 106.0
    assert not relister.healthy(now[0], threshold_seconds=5)


def test_relist_compares_the_listing_s_states_without_inspecting_each_container() -> None:
    class ListingOnly(FakeRuntime):
        async def list_containers(self, instance_uid: UID | None = None) -> list[ContainerRecord]:
            raise AssertionError("the relist inspects no container")

    runtime = ListingOnly(now=lambda: 0.0)
    runtime.containers[ContainerID("a")] = record("a", "u1", RunState.RUNNING)

    class Clock:
        def now(self) -> float:
            return 0.0

        async def sleep(self, seconds: float) -> None:
            return None

    relister = Relister(runtime, Clock())
    assert asyncio.run(relister.relist()) == [
        LifecycleEvent(instance_uid=UID("u1"), container_id=ContainerID("a"), kind=K.STARTED)
    ]
    runtime.containers[ContainerID("a")] = record("a", "u1", RunState.EXITED)
    assert [e.kind for e in asyncio.run(relister.relist())] == [K.DIED]
    assert runtime.state_listings == 2
