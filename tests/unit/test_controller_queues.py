"""The work queue and the expectations: dedup, one worker per key, delays, back-off."""

from __future__ import annotations

import asyncio

import pytest

from kopflet.controller.expectations import Expectations
from kopflet.controller.work_queue import WorkQueue

pytestmark = pytest.mark.unit


def test_a_key_added_many_times_is_handed_out_once() -> None:
    async def scenario() -> list[str]:
        queue: WorkQueue[str] = WorkQueue("t")
        for key in ("a", "b", "a", "a", "b"):
            queue.add(key)
        return [await queue.get(), await queue.get(), *(() if not len(queue) else ["extra"])]

    assert asyncio.run(scenario()) == ["a", "b"]


def test_a_key_added_while_processing_comes_back_after_done_not_before() -> None:
    async def scenario() -> tuple[int, str]:
        queue: WorkQueue[str] = WorkQueue("t")
        queue.add("a")
        key = await queue.get()
        queue.add("a")  # an event arrives while a worker reconciles "a"
        waiting = len(queue)
        queue.done(key)
        return waiting, await asyncio.wait_for(queue.get(), timeout=1)

    assert asyncio.run(scenario()) == (0, "a")


def test_add_after_keeps_the_earliest_time() -> None:
    async def scenario() -> float:
        queue: WorkQueue[str] = WorkQueue("t")
        loop = asyncio.get_running_loop()
        started = loop.time()
        queue.add_after("a", 5.0)
        queue.add_after("a", 0.05)
        queue.add_after("a", 3.0)
        await asyncio.wait_for(queue.get(), timeout=1)
        return loop.time() - started

    assert 0.04 <= asyncio.run(scenario()) < 1


def test_retry_backs_off_exponentially_until_forgotten() -> None:
    async def scenario() -> list[float]:
        queue: WorkQueue[str] = WorkQueue("t")
        delays = [queue.retry("a") for _ in range(3)]
        queue.forget("a")
        delays.append(queue.retry("a"))
        queue.close()
        return delays

    assert asyncio.run(scenario()) == [0.05, 0.1, 0.2, 0.05]


def test_latency_is_reported_per_key_handed_out() -> None:
    async def scenario() -> list[float]:
        seen: list[float] = []
        queue: WorkQueue[str] = WorkQueue("t", on_latency=seen.append)
        queue.add("a")
        await asyncio.sleep(0.02)
        await queue.get()
        return seen

    (latency,) = asyncio.run(scenario())
    assert latency >= 0.015


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_expectations_hold_a_key_until_its_creates_and_deletes_are_seen() -> None:
    clock = Clock()
    expectations: Expectations[str] = Expectations(clock=clock, ttl_seconds=30)
    expectations.expect_creates("wl", ["i-1", "i-2"])
    expectations.expect_deletes("wl", ["uid-9"])
    assert not expectations.satisfied("wl", present_names={"i-1"}, live_uids={"uid-9"})
    assert not expectations.satisfied("wl", present_names={"i-1", "i-2"}, live_uids={"uid-9"})
    assert expectations.satisfied("wl", present_names={"i-1", "i-2"}, live_uids=set())
    assert expectations.seconds_until_expiry("wl") is None


def test_expectations_expire_so_a_lost_event_does_not_stall_a_workload() -> None:
    clock = Clock()
    expectations: Expectations[str] = Expectations(clock=clock, ttl_seconds=30)
    expectations.expect_creates("wl", ["i-1"])
    clock.now = 10
    assert expectations.seconds_until_expiry("wl") == 20
    assert not expectations.satisfied("wl", present_names=set(), live_uids=set())
    clock.now = 31
    assert expectations.satisfied("wl", present_names=set(), live_uids=set())


def test_a_refused_create_is_not_waited_for() -> None:
    expectations: Expectations[str] = Expectations(clock=Clock())
    expectations.expect_creates("wl", ["i-1"])
    expectations.create_failed("wl", "i-1")
    assert expectations.satisfied("wl", present_names=set(), live_uids=set())
