"""Probe workers: one per (container, probe type), thresholds counted, results on change only.

The kubelet's semantics, kept: the first check runs ``initialDelaySeconds`` after the
container started, then every ``periodSeconds``; a result flips only after
``successThreshold`` / ``failureThreshold`` consecutive outcomes; readiness starts as
failed and liveness as succeeded; liveness and readiness wait for the startup probe to
succeed; a worker whose liveness or startup probe failed stops, because its container is
about to be killed (the next container gets fresh workers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from kopflet.agent.runtime.clock import Clock
from kopflet.agent.runtime.labels import ContainerID
from kopflet.api import UID, Probe


class ProbeType(StrEnum):
    STARTUP = "Startup"
    LIVENESS = "Liveness"
    READINESS = "Readiness"


@dataclass(frozen=True, kw_only=True)
class ProbeKey:
    instance_uid: UID
    container_id: ContainerID
    container_name: str
    probe_type: ProbeType


@dataclass(frozen=True, kw_only=True)
class ProbeOutcome:
    ok: bool
    message: str = ""


@dataclass(frozen=True, kw_only=True)
class ProbeCount:
    """The reported result and the run of equal outcomes that led to it."""

    ok: bool
    successes: int = 0
    failures: int = 0


def initial_count(probe_type: ProbeType) -> ProbeCount:
    # Readiness must be earned; liveness is presumed until proven otherwise.
    return ProbeCount(ok=probe_type is ProbeType.LIVENESS)


def count(state: ProbeCount, outcome: ProbeOutcome, probe: Probe) -> ProbeCount:
    """The state after one more outcome; ``ok`` flips only when a threshold is reached."""
    probe = probe.with_defaults()
    success_threshold = probe.success_threshold or 1
    failure_threshold = probe.failure_threshold or 3
    if outcome.ok:
        successes = state.successes + 1
        ok = state.ok or successes >= success_threshold
        return ProbeCount(ok=ok, successes=successes, failures=0)
    failures = state.failures + 1
    ok = state.ok and failures < failure_threshold
    return ProbeCount(ok=ok, successes=0, failures=failures)


ProbeCheck = Callable[[], Awaitable[ProbeOutcome]]
ResultListener = Callable[[ProbeKey, bool, str], None]


class ProbeWorker:
    def __init__(
        self,
        *,
        key: ProbeKey,
        probe: Probe,
        check: ProbeCheck,
        clock: Clock,
        started_at: float,
        on_change: ResultListener,
        gate: Callable[[], bool] = lambda: True,
    ) -> None:
        self.key = key
        self._probe = probe.with_defaults()
        self._check = check
        self._clock = clock
        self._started_at = started_at
        self._on_change = on_change
        self._gate = gate
        self.state = initial_count(key.probe_type)

    async def _checked(self) -> ProbeOutcome:
        timeout = float(self._probe.timeout_seconds or 1)
        try:
            return await asyncio.wait_for(self._check(), timeout=timeout)
        except TimeoutError:
            return ProbeOutcome(ok=False, message=f"timeout after {timeout:g}s")
        except Exception as exc:  # a probe that cannot run has failed, the worker goes on
            return ProbeOutcome(ok=False, message=str(exc) or type(exc).__name__)

    async def step(self) -> bool:
        """One probe; False once the worker has nothing more to do."""
        if not self._gate():
            return True
        outcome = await self._checked()
        before = self.state.ok
        self.state = count(self.state, outcome, self._probe)
        if self.key.probe_type is ProbeType.STARTUP:
            # Starts unknown; ends at the first success or at the failure threshold.
            failed = self.state.failures >= (self._probe.failure_threshold or 3)
            if self.state.ok or failed:
                self._on_change(self.key, self.state.ok, outcome.message)
                return False
            return True
        if self.state.ok != before:
            self._on_change(self.key, self.state.ok, outcome.message)
        return self.state.ok or self.key.probe_type is ProbeType.READINESS

    async def run(self) -> None:
        delay = self._started_at + (self._probe.initial_delay_seconds or 0) - self._clock.now()
        await self._clock.sleep(max(0.0, delay))
        period = float(self._probe.period_seconds or 10)
        while await self.step():
            await self._clock.sleep(period)
