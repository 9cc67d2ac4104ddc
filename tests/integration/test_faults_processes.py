"""kill -9 of an agent, and of the active controller, in the middle of a rolling update: the
restarted process re-lists and converges, and nothing is lost or duplicated."""

from __future__ import annotations

import pytest
from fault_cluster import (
    FaultCluster,
    assert_converged,
    faults_cluster,
    faults_namespace,
    wait_rollout_started,
    web_workload,
)

__all__ = ["faults_cluster", "faults_namespace"]

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

REPLICAS = 6


def _busiest_node(cluster: FaultCluster, namespace: str) -> str:
    counts: dict[str, int] = {}
    for instance in cluster.instances(namespace):
        node = instance["spec"].get("nodeName")
        if node:
            counts[node] = counts.get(node, 0) + 1
    return max(counts, key=lambda n: counts[n])


def test_agent_killed_mid_rollout_restarts_and_converges_without_twins(
    faults_cluster: FaultCluster, faults_namespace: str
) -> None:
    cluster, ns = faults_cluster, faults_namespace
    cluster.apply(ns, web_workload("web", replicas=REPLICAS, version="v1"))
    assert_converged(cluster, ns, "web", REPLICAS, timeout=180)

    cluster.apply(ns, web_workload("web", replicas=REPLICAS, version="v2"))
    wait_rollout_started(cluster, ns, "web", at_least=1)
    node = _busiest_node(cluster, ns)
    killed = cluster.kill("agent", node)
    cluster.wait_running_again("agent", node, old_pid=killed)

    assert_converged(cluster, ns, "web", REPLICAS, timeout=300)
    assert cluster.component("agent", node).restarts >= 1


def test_controller_killed_mid_rollout_restarts_and_converges_without_twins(
    faults_cluster: FaultCluster, faults_namespace: str
) -> None:
    cluster, ns = faults_cluster, faults_namespace
    cluster.apply(ns, web_workload("web", replicas=REPLICAS, version="v1"))
    assert_converged(cluster, ns, "web", REPLICAS, timeout=180)

    cluster.apply(ns, web_workload("web", replicas=REPLICAS, version="v2"))
    wait_rollout_started(cluster, ns, "web", at_least=1)
    killed = cluster.kill("controller")
    cluster.wait_running_again("controller", None, old_pid=killed)
    # The rollout must also go on with a spec change made while no controller leads.
    cluster.apply(ns, web_workload("web", replicas=REPLICAS, version="v3"))

    assert_converged(cluster, ns, "web", REPLICAS, timeout=300)
    versions = {
        env["value"]
        for instance in cluster.instances(ns, "app=web")
        for env in instance["spec"]["containers"][0]["env"]
    }
    assert versions == {"v3"}
