"""The node's own objects: NodeAgent registration and status, the Lease, and what feeds them."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fake_kube_api import FakeKubeApi

from kopflet.agent.kube_client import ApiUnavailable
from kopflet.agent.node_environment import (
    default_route_device,
    first_global_address,
    pick_sandbox_image,
)
from kopflet.agent.node_lease import NodeLease, lease_body
from kopflet.agent.node_registration import HOSTNAME_LABEL, NodeRegistration
from kopflet.agent.node_status import NodeFacts, go_architecture, node_status
from kopflet.agent.observability import HealthCheck, health_report
from kopflet.agent.options import OptionsError, parse_options
from kopflet.agent.runtime import EngineInfo
from kopflet.api import NodeAgentStatus, find_condition

pytestmark = pytest.mark.unit

NODES = "/apis/kopflet.dev/v1alpha1/nodeagents"
LEASE = "/apis/coordination.k8s.io/v1/namespaces/kopflet-node-lease/leases/node-2"
ENGINE = EngineInfo(
    version="20.10.24",
    api_version="1.41",
    cpus=4,
    memory_bytes=8 * 1024**3,
    kernel_version="6.1.0",
    operating_system="Debian GNU/Linux 12 (bookworm)",
)
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def facts(**changes: Any) -> NodeFacts:
    base = NodeFacts(
        node_name="node-2",
        address="172.30.1.12",
        agent_version="0.1.0",
        engine=ENGINE,
        runtime_healthy=True,
        instance_cidr="10.244.2.0/24",
        proxy_mode="iptables",
        architecture="amd64",
        instances=3,
    )
    return dataclasses.replace(base, **changes)


def ready(status: NodeAgentStatus) -> tuple[str, str | None, str | None]:
    found = find_condition(status.conditions, "Ready")
    assert found is not None
    return found.status, found.reason, found.last_transition_time


# -- status, pure -----------------------------------------------------------------------------


def test_node_status_reports_addresses_capacity_and_node_info() -> None:
    status = node_status(facts(), previous=None, now=T0).to_dict()
    assert status["addresses"] == [
        {"type": "InternalIP", "address": "172.30.1.12"},
        {"type": "Hostname", "address": "node-2"},
    ]
    assert status["capacity"] == {"cpu": "4", "memory": "8388608Ki", "instances": "110"}
    assert status["allocatable"] == status["capacity"]
    assert status["nodeInfo"] == {
        "engineVersion": "20.10.24",
        "kernelVersion": "6.1.0",
        "agentVersion": "0.1.0",
        "proxyMode": "iptables",
        "osImage": "Debian GNU/Linux 12 (bookworm)",
        "architecture": "amd64",
    }
    assert status["instances"] == 3
    assert ready(node_status(facts(), previous=None, now=T0)) == (
        "True",
        "AgentReady",
        "2025-01-01T00:00:00Z",
    )


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"engine": None, "engine_error": "connection refused"}, "engine unreachable"),
        ({"runtime_healthy": False}, "relist"),
        ({"instance_cidr": None}, "instanceCIDR"),
    ],
)
def test_node_is_not_ready_when_it_cannot_run_instances(
    changes: dict[str, Any], words: str
) -> None:
    status = node_status(facts(**changes), previous=None, now=T0)
    condition = find_condition(status.conditions, "Ready")
    assert condition is not None and condition.status == "False"
    assert condition.reason == "AgentNotReady" and words in (condition.message or "")


def test_ready_keeps_its_transition_time_until_it_flips() -> None:
    first = node_status(facts(), previous=None, now=T0)
    later = node_status(facts(), previous=first, now=T0 + timedelta(minutes=5))
    assert later.to_dict() == first.to_dict()
    flipped = node_status(facts(runtime_healthy=False), previous=later, now=T0 + timedelta(hours=1))
    assert ready(flipped) == ("False", "AgentNotReady", "2025-01-01T01:00:00Z")


def test_an_engine_that_stops_answering_keeps_the_capacity_last_known() -> None:
    first = node_status(facts(), previous=None, now=T0)
    down = node_status(facts(engine=None, engine_error="timeout"), previous=first, now=T0)
    assert down.capacity == first.capacity


def test_every_proxy_mode_is_reported_in_node_info() -> None:
    for mode in ("iptables", "nftables", "userspace"):
        status = node_status(facts(proxy_mode=mode), previous=None, now=T0)
        assert status.node_info is not None and status.node_info.proxy_mode == mode


def test_architecture_is_spelled_as_kubernetes_does() -> None:
    assert go_architecture("x86_64") == "amd64" and go_architecture("aarch64") == "arm64"


# -- registration ---------------------------------------------------------------------------------


def registration(api: FakeKubeApi, current: list[NodeFacts]) -> NodeRegistration:
    async def read() -> NodeFacts:
        return current[0]

    return NodeRegistration(api, node_name="node-2", facts=read, now=lambda: T0)


def test_agent_creates_its_node_agent_labelled_with_the_node_name() -> None:
    api = FakeKubeApi()
    node = registration(api, [facts()])
    asyncio.run(node.register())
    stored = api.objects[f"{NODES}/node-2"]
    assert stored["metadata"]["labels"] == {HOSTNAME_LABEL: "node-2"}
    assert node.uid == stored["metadata"]["uid"]


def test_a_restarted_agent_takes_over_its_node_agent_and_its_subnet() -> None:
    api = FakeKubeApi()
    api.put_object(
        f"{NODES}/node-2",
        {"metadata": {"name": "node-2"}, "spec": {"instanceCIDR": "10.244.2.0/24"}},
    )
    node = registration(api, [facts()])
    asyncio.run(node.register())
    assert node.instance_cidr == "10.244.2.0/24"
    assert api.objects[f"{NODES}/node-2"]["metadata"]["labels"] == {HOSTNAME_LABEL: "node-2"}
    assert asyncio.run(asyncio.wait_for(node.wait_for_instance_cidr(), 1)) == "10.244.2.0/24"


def test_status_is_written_only_when_it_changed() -> None:
    api = FakeKubeApi()
    current = [facts()]
    node = registration(api, current)

    async def scenario() -> list[bool]:
        await node.register()
        written = [await node.sync_status(), await node.sync_status()]
        current[0] = facts(instances=4)
        written.append(await node.sync_status())
        return written

    assert asyncio.run(scenario()) == [True, False, True]
    patches = [b for p, b in api.methods("PATCH") if p.endswith("/status")]
    assert patches[1] == {"status": {"instances": 4}}
    assert api.objects[f"{NODES}/node-2"]["status"]["instances"] == 4


def test_a_deleted_node_agent_is_registered_again() -> None:
    api = FakeKubeApi()
    node = registration(api, [facts()])

    async def scenario() -> None:
        task = asyncio.create_task(node.run())
        for _ in range(200):  # bounded: 2 s
            await asyncio.sleep(0.01)
            if len(api.methods("POST")) == 1 and "status" in api.objects[f"{NODES}/node-2"]:
                break
        del api.objects[f"{NODES}/node-2"]
        node.observe(None)  # what the NodeAgent watch reports
        for _ in range(200):
            await asyncio.sleep(0.01)
            if f"{NODES}/node-2" in api.objects and "status" in api.objects[f"{NODES}/node-2"]:
                break
        task.cancel()

    asyncio.run(scenario())
    assert len(api.methods("POST")) == 2
    assert api.objects[f"{NODES}/node-2"]["status"]["instances"] == 3


def test_node_events_say_starting_and_each_ready_transition() -> None:
    api = FakeKubeApi()
    current = [facts()]
    events: list[tuple[str, str, str]] = []

    async def read() -> NodeFacts:
        return current[0]

    node = NodeRegistration(
        api,
        node_name="node-2",
        facts=read,
        now=lambda: T0,
        events=lambda uid, type, reason, message: events.append((uid, reason, message)),
    )

    async def scenario() -> None:
        await node.register()
        await node.sync_status()
        await node.sync_status()
        current[0] = facts(runtime_healthy=False)
        await node.sync_status()

    asyncio.run(scenario())
    uid = api.objects[f"{NODES}/node-2"]["metadata"]["uid"]
    assert events == [
        (uid, "Starting", "Starting kopflet agent."),
        (uid, "NodeReady", "Node node-2 status is now: NodeReady"),
        (uid, "NodeNotReady", "Node node-2 status is now: NodeNotReady"),
    ]


# -- lease ----------------------------------------------------------------------------------------


def test_lease_body_is_the_kubelets_node_lease_owned_by_the_node_agent() -> None:
    body = lease_body("node-2", now=1_700_000_000.5, owner_uid="na-uid")
    assert body["metadata"]["namespace"] == "kopflet-node-lease"
    assert body["spec"] == {
        "holderIdentity": "node-2",
        "leaseDurationSeconds": 40,
        "renewTime": "2023-11-14T22:13:20.500000Z",
    }
    assert body["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "kopflet.dev/v1alpha1",
            "kind": "NodeAgent",
            "name": "node-2",
            "uid": "na-uid",
        }
    ]


def test_lease_is_created_then_renewed_with_the_version_last_seen() -> None:
    api = FakeKubeApi()
    now = [1000.0]
    lease = NodeLease(api, node_name="node-2", owner_uid=lambda: "na-uid", clock=lambda: now[0])

    async def scenario() -> None:
        await lease.renew()
        now[0] += 10
        await lease.renew()

    asyncio.run(scenario())
    assert [m for m, p, _ in api.calls if p.startswith("/apis/coordination")] == [
        "GET",
        "POST",
        "PUT",
    ]
    assert api.objects[LEASE]["spec"]["renewTime"] == "1970-01-01T00:16:50.000000Z"
    assert lease.last_renewal == 1010.0


def test_a_lease_changed_behind_our_back_is_read_again_not_lost() -> None:
    api = FakeKubeApi()
    lease = NodeLease(api, node_name="node-2", clock=lambda: 1000.0)
    asyncio.run(lease.renew())
    api.put_object(LEASE, api.objects[LEASE])  # someone else wrote it: our version is stale
    asyncio.run(lease.renew())
    assert [m for m, p, _ in api.calls][-3:] == ["PUT", "GET", "PUT"]
    assert api.objects[LEASE]["spec"]["holderIdentity"] == "node-2"


def test_a_failed_renewal_raises_for_the_loop_to_retry_sooner() -> None:
    api = FakeKubeApi()
    api.fail("GET", LEASE, ApiUnavailable("refused"))
    lease = NodeLease(api, node_name="node-2")
    with pytest.raises(ApiUnavailable):
        asyncio.run(lease.renew())
    assert lease.last_renewal is None


# -- options, environment, health ---------------------------------------------------------------


def test_flags_reach_the_engines_settings() -> None:
    options = parse_options(
        [
            "--node-name",
            "node-2",
            "--proxy-mode",
            "nftables",
            "--crash-backoff-initial",
            "1",
            "--crash-backoff-max",
            "4",
            "--proxy-full-resync-period",
            "10",
            "--allow-host-path",
            "--health-port",
            "0",
        ]
    )
    assert options.proxy_mode == "nftables" and options.allow_host_path
    assert (options.crash_backoff.initial_seconds, options.crash_backoff.max_seconds) == (1, 4)
    assert options.proxy_policy.full_period == 10 and options.health_port == 0
    assert options.docker_host == "unix:///var/run/docker.sock" and options.kubeconfig is None
    assert options.max_parallel_starts == 10


def test_parallel_starts_may_be_unlimited_but_not_negative() -> None:
    assert (
        parse_options(["--node-name", "n", "--max-parallel-starts", "0"]).max_parallel_starts == 0
    )
    with pytest.raises(SystemExit):
        parse_options(["--node-name", "n", "--max-parallel-starts", "-1"])


def test_two_agents_on_one_host_never_share_a_volumes_directory() -> None:
    a = parse_options(["--node-name", "node-1", "--docker-host", "unix:///run/a/docker.sock"])
    b = parse_options(["--node-name", "node-1", "--docker-host", "unix:///run/b/docker.sock"])
    c = parse_options(["--node-name", "node-2", "--docker-host", "unix:///run/a/docker.sock"])
    assert len({a.volumes_dir, b.volumes_dir, c.volumes_dir}) == 3
    assert a.volumes_dir.is_relative_to(Path("/var/lib/kopflet-agent"))


def test_node_name_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)
    with pytest.raises(OptionsError):
        parse_options([])
    assert parse_options(["--cleanup"]).cleanup


def test_node_address_is_that_of_the_default_routes_interface() -> None:
    routes = [
        {"dst": "10.0.0.0/8", "dev": "eth1"},
        {"dst": "default", "gateway": "x", "dev": "eth0"},
    ]
    assert default_route_device(routes) == "eth0"
    addresses = [{"addr_info": [{"family": "inet", "local": "172.30.1.12", "scope": "global"}]}]
    assert first_global_address(addresses) == "172.30.1.12"
    assert default_route_device([]) is None


def test_sandbox_image_prefers_the_local_clusters_busybox() -> None:
    assert pick_sandbox_image(["kopflet/busybox:1.35.0", "other:1"]) == "kopflet/busybox:1.35.0"
    assert pick_sandbox_image(["other:1"]) == "busybox:1.36"


def test_health_report_fails_when_any_check_fails_and_says_which() -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    ok, text = health_report([HealthCheck("runtime", lambda: (True, "relisted 1s ago"))])
    assert ok and text == "[+]runtime ok: relisted 1s ago\n"
    ok, text = health_report(
        [HealthCheck("runtime", lambda: (True, "fine")), HealthCheck("proxy", broken)]
    )
    assert not ok and "[-]proxy failed: check raised RuntimeError('boom')" in text
