"""An engine that fails passes (down, full, frozen): the worker backs off and says so on the
Instance, and recovers when the engine does. In-memory runtime, no infrastructure."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from kopflet.agent.runtime.config import RuntimeConfig
from kopflet.agent.runtime.engine import (
    FAILED_SYNC_REASON,
    MAX_RETRY_SECONDS,
    RuntimeEngine,
    engine_retry_delay,
)
from kopflet.agent.runtime.fake_runtime import FakeRuntime
from kopflet.agent.runtime.reporting import EventType, InstanceRef
from kopflet.api import Instance, InstanceStatus

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

IMAGE = "kopflet/busybox:test"
SANDBOX_IMAGE = "kopflet/pause:test"


class NoObjects:
    def config_map(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        return None

    def secret(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        return None


class Reporter:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.phases: list[str | None] = []

    async def instance_status(self, instance: Instance, status: InstanceStatus) -> None:
        self.phases.append(status.phase)

    def overwritten(self, instance: Instance) -> bool:
        return False

    async def instance_cleaned_up(self, instance: Instance) -> None:
        pass

    def event(self, ref: InstanceRef, *, type: EventType, reason: str, message: str) -> None:
        self.events.append((ref.name, reason, message))


def test_retry_delay_doubles_from_2s_to_30s() -> None:
    assert [engine_retry_delay(n) for n in range(1, 7)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert engine_retry_delay(50) == MAX_RETRY_SECONDS


def test_failed_pass_is_reported_on_the_instance_and_the_worker_recovers(
    tmp_path: Path,
) -> None:
    runtime = FakeRuntime(now=time.time, images=(IMAGE, SANDBOX_IMAGE))
    reporter = Reporter()
    engine = RuntimeEngine(
        runtime=runtime,
        config=RuntimeConfig(
            node_name="node-a",
            instance_subnet="10.244.1.0/24",
            sandbox_image=SANDBOX_IMAGE,
            volumes_dir=tmp_path / "volumes",
            relist_period_seconds=0.05,
            resync_period_seconds=0.2,
        ),
        resolver=NoObjects(),
        reporter=reporter,
    )
    instance = Instance.from_dict(
        {
            "metadata": {"name": "web-0", "namespace": "default", "uid": "uid-web-0"},
            "spec": {"nodeName": "node-a", "containers": [{"name": "main", "image": IMAGE}]},
        }
    )

    async def scenario() -> None:
        task = asyncio.create_task(engine.run())
        try:
            # The engine answers long enough for the network, then stops answering.
            engine.set_desired([])
            await asyncio.sleep(0.3)
            runtime.available = False
            engine.set_desired([instance])
            deadline = time.monotonic() + 5
            while not any(e[1] == FAILED_SYNC_REASON for e in reporter.events):
                assert time.monotonic() < deadline, "no FailedSync event"
                await asyncio.sleep(0.02)
            runtime.available = True
            deadline = time.monotonic() + 10
            while "Running" not in reporter.phases:
                assert time.monotonic() < deadline, "the instance never ran"
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    failed = [e for e in reporter.events if e[1] == FAILED_SYNC_REASON]
    assert failed[0][0] == "web-0"
    assert "fake engine is down" in failed[0][2]
    # Backed off: the first retry comes 2 s after the failure, so one report in that time.
    assert len(failed) == 1
