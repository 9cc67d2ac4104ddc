"""Faults of one node: its engine stopped, its link cut, its engine frozen. The node reports
what it can, the cluster routes around it, and when it is back it converges: instances come
back per their restart policy, stale containers are removed, no service sends traffic to them,
and the agent never crash-loops."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest
from fault_cluster import (
    FaultCluster,
    assert_converged,
    faults_cluster,
    faults_namespace,
    frozen,
    held,
    live,
    node_ready_status,
    our_rules,
    proxy_service,
    service_endpoints,
    warning_events,
    web_workload,
)

from kopflet.api.constants import GROUP, VERSION
from support import wait_for

__all__ = ["faults_cluster", "faults_namespace"]

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]

ENGINE_OUTAGE_SECONDS = 20


def _bare_instance(name: str, *, node: str, restart_policy: str) -> str:
    return f"""
apiVersion: {GROUP}/{VERSION}
kind: Instance
metadata:
  name: {name}
  labels: {{app: bare}}
spec:
  nodeName: {node}
  restartPolicy: {restart_policy}
  terminationGracePeriodSeconds: 2
  containers:
    - name: main
      image: kopflet/busybox:local
      command: ["sleep", "3600"]
"""


def _instance(cluster: FaultCluster, ns: str, name: str) -> dict[str, Any]:
    return cluster.get("instances", name, ns) or {}


def _status(instance: dict[str, Any]) -> dict[str, Any]:
    return dict(instance.get("status") or {})


def test_engine_stopped_20s_node_not_ready_then_instances_back_per_restart_policy(
    faults_cluster: FaultCluster, faults_namespace: str
) -> None:
    cluster, ns = faults_cluster, faults_namespace
    node = cluster.nodes[2]
    policies = {"always": "Always", "onfailure": "OnFailure", "never": "Never"}
    for name, policy in policies.items():
        cluster.apply(ns, _bare_instance(name, node=node.name, restart_policy=policy))
    wait_for(
        lambda: all(_status(_instance(cluster, ns, n)).get("phase") == "Running" for n in policies),
        timeout=120,
        message="the three instances run",
        diagnose=lambda: cluster.diagnose_namespace(ns),
    )
    uids = {n: _instance(cluster, ns, n)["metadata"]["uid"] for n in policies}
    agent_pid = cluster.component("agent", node.name).pid

    # 20 s from the moment dockerd is told to stop: it stops serving at once, and its own
    # shutdown (stopping every container) is part of the outage.
    seen_not_ready = False
    deadline = time.monotonic() + ENGINE_OUTAGE_SECONDS
    with held(cluster, "dockerd", node.name):
        while time.monotonic() < deadline:
            seen_not_ready = seen_not_ready or node_ready_status(cluster, node.name) == "False"
            time.sleep(0.5)

    def ready_again() -> bool:
        nonlocal seen_not_ready
        status = node_ready_status(cluster, node.name)
        seen_not_ready = seen_not_ready or status == "False"
        return seen_not_ready and status == "True"

    wait_for(
        ready_again,
        timeout=60,
        interval=0.5,
        message=f"{node.name} reported not Ready while its engine was down, and Ready after",
        diagnose=lambda: cluster.diagnose_namespace(ns),
    )

    def back() -> bool:
        always = _status(_instance(cluster, ns, "always"))
        onfailure = _status(_instance(cluster, ns, "onfailure"))
        never = _status(_instance(cluster, ns, "never"))
        return (
            always.get("phase") == "Running"
            and int(always.get("restartCount") or 0) >= 1
            and onfailure.get("phase") == "Running"
            and int(onfailure.get("restartCount") or 0) >= 1
            and never.get("phase") == "Failed"
        )

    wait_for(
        back,
        timeout=90,
        message="Always and OnFailure restarted, Never failed",
        diagnose=lambda: cluster.diagnose_namespace(ns),
    )
    # The same Instances (none evicted or replaced), one running copy each, the agent
    # untouched by its engine's outage.
    assert {n: _instance(cluster, ns, n)["metadata"]["uid"] for n in policies} == uids
    running = [
        c.labels["dev.kopflet.instance-name"]
        for c in cluster.our_containers(node)
        if c.labels.get("dev.kopflet.role") == "app"
        and c.labels.get("dev.kopflet.instance-namespace") == ns
    ]
    assert sorted(running) == ["always", "onfailure"]
    assert cluster.component("agent", node.name).pid == agent_pid


def _link(node_veth: str, state: str) -> None:
    subprocess.run(["ip", "link", "set", node_veth, state], check=True, timeout=10)


def test_node_cut_off_is_evicted_and_its_stale_containers_removed_when_it_returns(
    faults_cluster: FaultCluster, faults_namespace: str
) -> None:
    cluster, ns = faults_cluster, faults_namespace
    cluster.apply(ns, web_workload("web", replicas=3, version="v1"))
    cluster.apply(ns, proxy_service("web", selector="web"))
    assert_converged(cluster, ns, "web", 3, timeout=180)
    before = cluster.instances(ns, "app=web")
    target = next(n for n in cluster.nodes if n.name == before[0]["spec"]["nodeName"])
    stale = [i for i in before if i["spec"]["nodeName"] == target.name]
    stale_uids = {i["metadata"]["uid"] for i in stale}
    stale_ips = {i["status"]["instanceIP"] for i in stale}
    others = [n for n in cluster.nodes if n.name != target.name]

    _link(target.veth_host, "down")
    try:

        def rescheduled() -> bool:
            current = live(cluster.instances(ns, "app=web"))
            uids = {i["metadata"]["uid"] for i in current}
            return (
                not (uids & stale_uids)
                and len(current) == 3
                and all(i["spec"].get("nodeName") != target.name for i in current)
                and sum(1 for i in current if (i.get("status") or {}).get("phase") == "Running")
                == 3
                and not (service_endpoints(cluster, ns, "web") & stale_ips)
                and len(service_endpoints(cluster, ns, "web")) == 3
            )

        # Lease grace (40 s) + eviction timeout (30 s) + replacement start.
        wait_for(
            rescheduled,
            timeout=240,
            interval=2,
            message=f"instances of cut-off {target.name} replaced on the other nodes",
            diagnose=lambda: cluster.diagnose_namespace(ns),
        )
        # While cut off the node keeps running what it ran (it cannot know better).
        assert any(
            c.labels.get("dev.kopflet.instance-uid") in stale_uids
            for c in cluster.our_containers(target)
        )
    finally:
        _link(target.veth_host, "up")

    # Back: the stale containers go, and the workload is exactly its three replicas.
    assert_converged(cluster, ns, "web", 3, timeout=180)
    assert not any(
        c.labels.get("dev.kopflet.instance-uid") in stale_uids
        for c in cluster.our_containers(target, running_only=False)
    )
    wait_for(
        lambda: (
            not any(
                ip in " ".join(our_rules(cluster, n)) for n in cluster.nodes for ip in stale_ips
            )
        ),
        timeout=60,
        message="no node's rules send traffic to the stale instances",
    )
    assert not (service_endpoints(cluster, ns, "web") & stale_ips)
    assert all(node_ready_status(cluster, n.name) == "True" for n in others)
    wait_for(
        lambda: node_ready_status(cluster, target.name) == "True",
        timeout=90,
        message=f"{target.name} Ready again after its link is back",
        diagnose=lambda: cluster.diagnose_namespace(ns),
    )


def test_frozen_engine_gives_temporary_errors_on_the_instance_never_an_agent_crash(
    faults_cluster: FaultCluster, faults_namespace: str
) -> None:
    """The engine stops answering (SIGSTOP of dockerd) for longer than the agent's Docker
    timeout (60 s): the calls fail, the failure is reported on the Instance (a FailedSync
    Warning) and retried with back-off, the agent process stays the same, and once the engine
    answers the same Instance runs."""
    cluster, ns = faults_cluster, faults_namespace
    node = cluster.nodes[1]
    agent = cluster.component("agent", node.name)
    dockerd = cluster.component("dockerd", node.name)
    assert agent.pid is not None and dockerd.pid is not None

    reported: list[str] = []
    with frozen([dockerd.pid]):
        cluster.apply(ns, _bare_instance("patient", node=node.name, restart_policy="Always"))
        uid = _instance(cluster, ns, "patient")["metadata"]["uid"]

        def error_reported() -> bool:
            reported[:] = warning_events(cluster, ns, "patient")
            return any(line.startswith("FailedSync:") for line in reported)

        wait_for(
            error_reported,
            timeout=150,
            interval=1,
            message="the engine's failure is reported on the Instance",
            diagnose=lambda: cluster.diagnose_namespace(ns),
        )
    assert any("docker engine" in line for line in reported), reported
    assert cluster.component("agent", node.name).pid == agent.pid

    wait_for(
        lambda: _status(_instance(cluster, ns, "patient")).get("phase") == "Running",
        timeout=120,
        message="the instance runs once the engine answers",
        diagnose=lambda: cluster.diagnose_namespace(ns),
    )
    assert _instance(cluster, ns, "patient")["metadata"]["uid"] == uid, "it was replaced"
    assert not any(line.startswith("Evicted") for line in warning_events(cluster, ns, "patient"))
    # Never a crash loop: the same agent process throughout.
    after = cluster.component("agent", node.name)
    assert (after.pid, after.restarts) == (agent.pid, agent.restarts)
