"""Every node's agent registers its NodeAgent, renews its Lease, and serves health and metrics."""

from __future__ import annotations

import ipaddress
import sys
import time

import pytest
from agent_nodes import Admin, Agents, admin_api, agents, condition

from conftest import TestCluster
from kopflet import __version__
from support import wait_for

pytestmark = pytest.mark.integration
__all__ = ["admin_api", "agents"]


def test_every_node_registers_its_node_agent_ready_with_addresses_capacity_and_node_info(
    cluster: TestCluster, agents: Agents, admin_api: Admin
) -> None:
    subnets = []
    for node in cluster.nodes:
        obj = admin_api.node_agent(node.name)
        assert obj is not None
        assert obj["metadata"]["labels"]["kopflet.dev/hostname"] == node.name
        status = obj["status"]
        assert status["addresses"] == [
            {"type": "InternalIP", "address": node.address},
            {"type": "Hostname", "address": node.name},
        ]
        capacity = status["capacity"]
        assert int(capacity["cpu"]) >= 1 and capacity["memory"].endswith("Ki")
        assert capacity["instances"] == "110" and status["allocatable"] == capacity
        info = status["nodeInfo"]
        assert info["agentVersion"] == __version__ and info["proxyMode"] == "iptables"
        assert info["engineVersion"] and info["kernelVersion"] and info["architecture"]
        ready = condition(obj, "Ready")
        assert ready is not None and ready["status"] == "True", ready
        assert ready["reason"] == "AgentReady"
        subnets.append(ipaddress.ip_network(obj["spec"]["instanceCIDR"]))
    assert all(not a.overlaps(b) for i, a in enumerate(subnets) for b in subnets[i + 1 :])


def test_every_nodes_lease_is_renewed_every_10s(
    cluster: TestCluster, agents: Agents, admin_api: Admin
) -> None:
    first = {n.name: admin_api.lease_renew_time(n.name) for n in cluster.nodes}
    assert all(first.values()), first
    started = time.monotonic()
    for node in cluster.nodes:
        wait_for(
            lambda node=node: (t := admin_api.lease_renew_time(node.name)) and t > first[node.name],
            timeout=25,
            message=f"the Lease of {node.name} renewed",
            diagnose=lambda node=node: cluster.log_tail(f"{node.name}-agent.log"),
        )
    assert time.monotonic() - started < 25
    lease = admin_api.coordination.read_namespaced_lease(
        cluster.nodes[0].name, "kopflet-node-lease"
    )
    assert lease.spec.holder_identity == cluster.nodes[0].name
    assert lease.spec.lease_duration_seconds == 40
    [owner] = lease.metadata.owner_references
    assert (owner.kind, owner.name) == ("NodeAgent", cluster.nodes[0].name)


def fetch(cluster: TestCluster, node_index: int, url: str) -> tuple[int, str]:
    script = (
        "import sys,urllib.request,urllib.error\n"
        "try:\n"
        f"    r=urllib.request.urlopen('{url}',timeout=5)\n"
        "    print(r.status); print(r.read().decode())\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code); print(e.read().decode())\n"
    )
    done = cluster.in_node(cluster.nodes[node_index], sys.executable, "-c", script)
    code, _, body = done.stdout.partition("\n")
    return int(code or 0), body


def test_health_and_metrics_endpoints_answer_inside_the_node(
    cluster: TestCluster, agents: Agents
) -> None:
    code, body = fetch(cluster, 1, "http://127.0.0.1:10248/healthz")
    assert code == 200, body
    assert "[+]runtime ok" in body and "[+]proxy ok" in body
    code, body = fetch(cluster, 1, "http://127.0.0.1:10249/metrics")
    assert code == 200
    for metric in (
        "kopflet_runtime_relist_age_seconds",
        "kopflet_runtime_instance_sync_duration_seconds",
        'kopflet_runtime_engine_requests_total{operation="containers"}',
        "kopflet_proxy_sync_duration_seconds",
        "kopflet_proxy_last_sync_success_timestamp_seconds",
        "kopflet_agent_lease_renewals_total",
        "kopflet_agent_node_ready 1.0",
    ):
        assert metric in body, metric
