"""A node that is not Ready looks again within seconds, so an engine that comes back is
reported Ready before the controller's eviction timeout, not a status period later."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from fake_kube_api import FakeKubeApi

from kopflet.agent import node_registration
from kopflet.agent.node_registration import NodeRegistration
from kopflet.agent.node_status import NodeFacts
from kopflet.agent.runtime import EngineInfo

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

T0 = datetime(2025, 1, 1, tzinfo=UTC)
NODES = "/apis/kopflet.dev/v1alpha1/nodeagents"


def _facts(*, engine_up: bool) -> NodeFacts:
    return NodeFacts(
        node_name="node-2",
        address="172.30.1.12",
        agent_version="0.1.0",
        engine=EngineInfo(version="26.1.5", api_version="1.45", cpus=2, memory_bytes=4 << 30)
        if engine_up
        else None,
        engine_error=None if engine_up else "engine unreachable",
        runtime_healthy=True,
        instance_cidr="10.244.2.0/24",
        proxy_mode="iptables",
        architecture="amd64",
    )


def _ready(api: FakeKubeApi) -> str | None:
    status = api.objects.get(f"{NODES}/node-2", {}).get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            return str(condition["status"])
    return None


def test_not_ready_node_rechecks_soon_and_reports_ready_when_its_engine_is_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(node_registration, "NOT_READY_RECHECK_SECONDS", 0.05)
    api = FakeKubeApi()
    current = [_facts(engine_up=False)]
    calls = [0]

    async def read() -> NodeFacts:
        calls[0] += 1
        return current[0]

    node = NodeRegistration(api, node_name="node-2", facts=read, period=10.0, now=lambda: T0)

    async def scenario() -> None:
        task = asyncio.create_task(node.run())
        try:
            for _ in range(200):  # bounded: 2 s
                await asyncio.sleep(0.01)
                if _ready(api) == "False" and calls[0] >= 3:
                    break
            assert _ready(api) == "False" and calls[0] >= 3, "no recheck while not Ready"
            current[0] = _facts(engine_up=True)
            for _ in range(200):
                await asyncio.sleep(0.01)
                if _ready(api) == "True":
                    break
            assert _ready(api) == "True", "the engine's return waited for the status period"
            # Ready again: back to the status period, no more rechecks.
            settled = calls[0]
            await asyncio.sleep(0.3)
            assert calls[0] == settled
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
