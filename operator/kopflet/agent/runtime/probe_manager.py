"""Keeps one probe worker per running container and probe type, and their latest results.

The sync calls :meth:`ProbeManager.sync` after every pass; workers for containers that
stopped are cancelled, workers for new containers start with fresh counters (a
restarted container is a new container id). Results are read by the planner (liveness
and startup verdicts) and by the status computation (started, ready).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping

from kopflet.agent.runtime.clock import Clock
from kopflet.agent.runtime.container_runtime import ContainerRuntime
from kopflet.agent.runtime.instance_actions import KillReason, ProbeVerdict
from kopflet.agent.runtime.labels import ContainerID
from kopflet.agent.runtime.probe_checks import ProbeConfigError, probe_check
from kopflet.agent.runtime.probes import ProbeKey, ProbeType, ProbeWorker
from kopflet.agent.runtime.records import ObservedInstance, RunState
from kopflet.api import UID, Container, Instance, Probe

ProbeListener = Callable[[ProbeKey, bool, str], None]


def _probes_of(container: Container) -> dict[ProbeType, Probe]:
    found = {
        ProbeType.STARTUP: container.startup_probe,
        ProbeType.LIVENESS: container.liveness_probe,
        ProbeType.READINESS: container.readiness_probe,
    }
    return {t: p for t, p in found.items() if p is not None}


class ProbeManager:
    def __init__(
        self, *, runtime: ContainerRuntime, clock: Clock, on_result: ProbeListener
    ) -> None:
        self._runtime = runtime
        self._clock = clock
        self._on_result = on_result
        self._workers: dict[ProbeKey, asyncio.Task[None]] = {}
        self._results: dict[ProbeKey, tuple[bool, str]] = {}
        # Which probe types each container has, so "no probe" and "not yet" differ.
        self._configured: dict[ContainerID, frozenset[ProbeType]] = {}

    def _record(self, key: ProbeKey, ok: bool, message: str) -> None:
        self._results[key] = (ok, message)
        self._on_result(key, ok, message)

    def sync(self, instance: Instance, observed: ObservedInstance) -> None:
        ip = observed.instance_ip
        wanted: dict[ProbeKey, tuple[Probe, Container, float]] = {}
        running = set()
        for record in observed.containers:
            container = instance.spec.container_named(record.name)
            if record.state is not RunState.RUNNING or container is None or not ip:
                continue
            running.add(record.id)
            probes = _probes_of(container)
            self._configured[record.id] = frozenset(probes)
            for probe_type, probe in probes.items():
                key = ProbeKey(
                    instance_uid=observed.uid,
                    container_id=record.id,
                    container_name=record.name,
                    probe_type=probe_type,
                )
                wanted[key] = (probe, container, record.started_at or self._clock.now())
        for key in [k for k in self._workers if k.instance_uid == observed.uid]:
            if key not in wanted:
                self._workers.pop(key).cancel()
        for key, (probe, container, started_at) in wanted.items():
            # A finished worker (startup passed, liveness failed) stays until its container
            # goes: one verdict per container, never a second worker.
            if key in self._workers:
                continue
            try:
                check = probe_check(
                    probe=probe.with_defaults(),
                    container=container,
                    container_id=key.container_id,
                    instance_ip=ip or "",
                    runtime=self._runtime,
                )
            except ProbeConfigError as exc:
                self._record(key, False, str(exc))
                continue
            worker = ProbeWorker(
                key=key,
                probe=probe,
                check=check,
                clock=self._clock,
                started_at=started_at,
                on_change=self._record,
                gate=self._gate_for(key),
            )
            self._workers[key] = asyncio.create_task(
                worker.run(), name=f"probe-{key.probe_type}-{key.container_id[:12]}"
            )
        observed_ids = {r.id for r in observed.containers}
        for key in [k for k in self._results if k.instance_uid == observed.uid]:
            if key.container_id not in observed_ids:
                del self._results[key]
        for cid in [c for c in self._configured if c not in observed_ids]:
            if all(k.container_id != cid for k in self._workers):
                del self._configured[cid]

    def _gate_for(self, key: ProbeKey) -> Callable[[], bool]:
        if key.probe_type is ProbeType.STARTUP:
            return lambda: True
        return lambda: self.started(key.container_id)

    def _result(self, cid: ContainerID, probe_type: ProbeType) -> tuple[bool, str] | None:
        for key, result in self._results.items():
            if key.container_id == cid and key.probe_type is probe_type:
                return result
        return None

    def started(self, cid: ContainerID) -> bool:
        """The startup probe succeeded, or there is none."""
        if ProbeType.STARTUP not in self._configured.get(cid, frozenset()):
            return True
        result = self._result(cid, ProbeType.STARTUP)
        return result is not None and result[0]

    def ready(self, cid: ContainerID) -> bool:
        """Started, and the readiness probe succeeded (or there is none)."""
        if not self.started(cid):
            return False
        if ProbeType.READINESS not in self._configured.get(cid, frozenset()):
            return True
        result = self._result(cid, ProbeType.READINESS)
        return result is not None and result[0]

    def verdicts(self, uid: UID) -> Mapping[ContainerID, ProbeVerdict]:
        found = {}
        for key, (ok, message) in self._results.items():
            if key.instance_uid != uid or ok or key.probe_type is ProbeType.READINESS:
                continue
            reason = (
                KillReason.LIVENESS_FAILED
                if key.probe_type is ProbeType.LIVENESS
                else KillReason.STARTUP_FAILED
            )
            found[key.container_id] = ProbeVerdict(
                reason=reason,
                message=f"{key.container_name} failed {key.probe_type.lower()} probe, "
                f"will be restarted: {message}".rstrip(": "),
            )
        return found

    def forget(self, uid: UID) -> None:
        for key in [k for k in self._workers if k.instance_uid == uid]:
            self._workers.pop(key).cancel()
        for key in [k for k in self._results if k.instance_uid == uid]:
            del self._results[key]

    async def close(self) -> None:
        tasks = list(self._workers.values())
        self._workers.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
