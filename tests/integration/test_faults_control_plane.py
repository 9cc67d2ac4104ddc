"""kube-apiserver and etcd frozen for 30 s (SIGSTOP: alive but silent, as behind a partition):
the nodes keep running what they run, with the rules they have, and restart a crashed
container on their own; once the control plane answers again, watches resume and the status
catches up within 30 s."""

from __future__ import annotations

import time

import pytest
from fault_cluster import (
    FaultCluster,
    assert_converged,
    faults_cluster,
    faults_namespace,
    frozen,
    our_rules,
    proxy_service,
    service_endpoints,
    web_workload,
)

from support import wait_for

__all__ = ["faults_cluster", "faults_namespace"]

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

OUTAGE_SECONDS = 30


def test_control_plane_frozen_30s_leaves_nodes_alone_and_status_catches_up(
    faults_cluster: FaultCluster, faults_namespace: str
) -> None:
    cluster, ns = faults_cluster, faults_namespace
    cluster.apply(ns, web_workload("web", replicas=3, version="v1"))
    cluster.apply(ns, proxy_service("web", selector="web"))
    assert_converged(cluster, ns, "web", 3, timeout=180)
    instances = cluster.instances(ns, "app=web")
    ips = {i["status"]["instanceIP"] for i in instances}
    wait_for(
        lambda: service_endpoints(cluster, ns, "web") == ips,
        timeout=60,
        message="the ProxyService has the three instances as endpoints",
    )
    # The proxies program in full at most every second: let them settle on the endpoints.
    time.sleep(3)
    containers = {n.name: cluster.running_state(n) for n in cluster.nodes}
    rules = {n.name: our_rules(cluster, n) for n in cluster.nodes}
    assert any(ip in " ".join(rules[n]) for n in rules for ip in ips), "no endpoint rules"

    victim = instances[0]
    node = next(n for n in cluster.nodes if n.name == victim["spec"]["nodeName"])
    uid = victim["metadata"]["uid"]
    pids = [cluster.component("etcd").pid, cluster.component("kube-apiserver").pid]
    assert None not in pids
    with frozen([p for p in pids if p is not None]):
        # A crash while the API server is away: the node restarts the container by itself.
        crashed = next(
            c
            for c in cluster.our_containers(node)
            if c.labels.get("dev.kopflet.instance-uid") == uid
            and c.labels.get("dev.kopflet.role") == "app"
        )
        crashed.kill()
        deadline = time.monotonic() + OUTAGE_SECONDS
        restarted = False
        while time.monotonic() < deadline:
            now = cluster.running_state(node)
            restarted = restarted or any(cid not in containers[node.name] for cid in now)
            time.sleep(1)
        after = {n.name: cluster.running_state(n) for n in cluster.nodes}
        rules_after = {n.name: our_rules(cluster, n) for n in cluster.nodes}

    assert restarted, "the crashed container was not restarted while the API server was away"
    for name, before in containers.items():
        untouched = {cid: started for cid, started in before.items() if cid != crashed.id}
        still = {cid: after[name].get(cid) for cid in untouched}
        assert still == untouched, f"{name}: running containers changed during the outage"
    assert rules_after == rules, "netfilter rules changed while the API server was away"

    # Status catches up within 30 s of the API server answering again.
    resumed = time.monotonic()

    def restart_reported() -> bool:
        current = cluster.get("instances", victim["metadata"]["name"], ns) or {}
        return int((current.get("status") or {}).get("restartCount") or 0) >= 1

    wait_for(
        restart_reported,
        timeout=30,
        interval=0.5,
        message="the restart during the outage is reported on the Instance",
        diagnose=lambda: cluster.diagnose_namespace(ns),
    )
    # And the watches work again: a change made now reaches the nodes.
    cluster.kubectl("-n", ns, "scale", "workload/web", "--replicas=4")
    assert_converged(cluster, ns, "web", 4, timeout=120)
    assert time.monotonic() - resumed < 150
    # Nothing was evicted or replaced: the three instances are the same objects.
    uids = {i["metadata"]["uid"] for i in cluster.instances(ns, "app=web")}
    assert {i["metadata"]["uid"] for i in instances} <= uids
