"""Probe thresholds and worker timing, with injected time (delays asserted, never slept)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from kopflet.agent.runtime.labels import ContainerID
from kopflet.agent.runtime.probes import (
    ProbeCount,
    ProbeKey,
    ProbeOutcome,
    ProbeType,
    ProbeWorker,
    count,
    initial_count,
)
from kopflet.api import UID, Probe

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.t = now
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)


def probe(**timing: int) -> Probe:
    return Probe.from_dict({"exec": {"command": ["true"]}, **_camel(timing)}).with_defaults()


def _camel(fields: dict[str, int]) -> dict[str, int]:
    def camel(name: str) -> str:
        head, *rest = name.split("_")
        return head + "".join(part.capitalize() for part in rest)

    return {camel(k): v for k, v in fields.items()}


OK = ProbeOutcome(ok=True)
FAIL = ProbeOutcome(ok=False, message="nope")


def test_readiness_starts_failed_and_liveness_starts_healthy() -> None:
    assert initial_count(ProbeType.READINESS).ok is False
    assert initial_count(ProbeType.LIVENESS).ok is True


def test_result_flips_only_after_the_threshold_of_consecutive_outcomes() -> None:
    p = probe(failure_threshold=3, success_threshold=2)
    state = ProbeCount(ok=True)
    results = []
    for outcome in (FAIL, FAIL, OK, FAIL, FAIL, FAIL, OK, OK):
        state = count(state, outcome, p)
        results.append(state.ok)
    assert results == [True, True, True, True, True, False, False, True]


def outcomes(*items: ProbeOutcome) -> Iterator[ProbeOutcome]:
    yield from items
    while True:
        yield OK


def run_worker(
    probe_type: ProbeType,
    p: Probe,
    script: Iterator[ProbeOutcome],
    *,
    started_at: float,
    clock: FakeClock,
    gate: bool = True,
    max_sleeps: int = 12,
) -> list[tuple[bool, str]]:
    changes: list[tuple[bool, str]] = []
    key = ProbeKey(
        instance_uid=UID("u"),
        container_id=ContainerID("c"),
        container_name="main",
        probe_type=probe_type,
    )

    async def check() -> ProbeOutcome:
        return next(script)

    worker = ProbeWorker(
        key=key,
        probe=p,
        check=check,
        clock=clock,
        started_at=started_at,
        on_change=lambda _k, ok, msg: changes.append((ok, msg)),
        gate=lambda: gate,
    )

    async def bounded() -> None:
        task = asyncio.ensure_future(worker.run())
        while not task.done() and len(clock.sleeps) < max_sleeps:
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(asyncio.wait_for(bounded(), timeout=5))
    return changes


def test_liveness_waits_initial_delay_then_probes_every_period_until_it_fails() -> None:
    clock = FakeClock(now=1000.0)
    p = probe(initial_delay_seconds=5, period_seconds=3, failure_threshold=2)
    changes = run_worker(
        ProbeType.LIVENESS, p, outcomes(OK, FAIL, FAIL), started_at=998.0, clock=clock
    )
    # 3 s left of the initial delay, then a period after each of the first two checks;
    # the worker ends with the failure verdict.
    assert clock.sleeps == [3.0, 3.0, 3.0]
    assert changes == [(False, "nope")]


def test_readiness_reports_each_change_and_keeps_probing() -> None:
    clock = FakeClock()
    p = probe(period_seconds=1, failure_threshold=1)
    changes = run_worker(
        ProbeType.READINESS, p, outcomes(FAIL, OK, OK, FAIL, OK), started_at=1000.0, clock=clock
    )
    assert changes == [(True, ""), (False, "nope"), (True, "")]


def test_startup_probe_ends_at_first_success() -> None:
    clock = FakeClock()
    changes = run_worker(
        ProbeType.STARTUP, probe(period_seconds=2), outcomes(FAIL, OK), started_at=1000, clock=clock
    )
    assert changes == [(True, "")]
    assert clock.sleeps == [0.0, 2.0]


def test_startup_probe_fails_at_the_failure_threshold() -> None:
    clock = FakeClock()
    failing = iter([FAIL] * 10)
    p = probe(period_seconds=1, failure_threshold=3)
    changes = run_worker(ProbeType.STARTUP, p, failing, started_at=1000, clock=clock)
    assert changes == [(False, "nope")]


def test_gated_worker_does_not_probe_before_startup_succeeded() -> None:
    clock = FakeClock()
    failing = iter([FAIL] * 100)
    p = probe(period_seconds=1, failure_threshold=1)
    changes = run_worker(
        ProbeType.LIVENESS, p, failing, started_at=1000, clock=clock, gate=False, max_sleeps=5
    )
    assert changes == [] and len(clock.sleeps) == 5


def test_a_check_that_times_out_is_a_failure() -> None:
    clock = FakeClock()

    async def slow() -> ProbeOutcome:
        await asyncio.sleep(5)
        return OK

    key = ProbeKey(
        instance_uid=UID("u"),
        container_id=ContainerID("c"),
        container_name="main",
        probe_type=ProbeType.READINESS,
    )
    p = probe(timeout_seconds=1)
    worker = ProbeWorker(
        key=key, probe=p, check=slow, clock=clock, started_at=0, on_change=lambda *_: None
    )
    # A real timeout of 1 s: the only place these tests wait on the wall clock.
    assert asyncio.run(worker.step()) is True
    assert worker.state == ProbeCount(ok=False, successes=0, failures=1)
