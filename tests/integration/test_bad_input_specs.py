"""Specs the API server accepts but no node can run as asked: each surfaces as a reason on the
Instance and a Warning event, and the agent and the controller keep serving other objects.

Runs on the faults cluster (supervised agents with node-bound credentials), so the processes
whose survival is checked are the ones the supervisor started."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fault_cluster import (
    FaultCluster,
    assert_converged,
    bare_instance,
    create_instance,
    faults_cluster,
    faults_namespace,
    warning_events,
    web_workload,
)

from support import wait_for

__all__ = ["faults_cluster", "faults_namespace"]

pytestmark = pytest.mark.timeout(600)


def _instance(cluster: FaultCluster, ns: str, name: str) -> dict[str, Any]:
    return cluster.get("instances", name, ns) or {}


def _container_reason(instance: dict[str, Any], container: str) -> tuple[str, str] | None:
    """Why a container is not running as asked: the reason it waits (or its last termination's),
    and every message its state and last state carry (a termination message is the log tail)."""
    reason, messages = None, []
    for status in (instance.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") != container:
            continue
        for state in (status.get("state") or {}, status.get("lastState") or {}):
            for key in ("waiting", "terminated"):
                found = state.get(key)
                if found and found.get("reason") not in (None, "ContainerCreating"):
                    reason = reason or str(found["reason"])
                    messages.append(str(found.get("message") or ""))
    return (reason, "\n".join(messages)) if reason else None


def _wait_reported(
    cluster: FaultCluster, ns: str, name: str, *, container: str, reasons: set[str], text: str
) -> None:
    seen: list[object] = []

    def reported() -> bool:
        instance = _instance(cluster, ns, name)
        found = _container_reason(instance, container)
        events = warning_events(cluster, ns, name)
        seen[:] = [found, (instance.get("status") or {}).get("reason"), events]
        return (
            found is not None
            and found[0] in reasons
            and any(text in e or text in found[1] for e in events)
        )

    wait_for(
        reported,
        timeout=120,
        interval=1,
        message=f"{name}: a reason among {sorted(reasons)} and a Warning event with {text!r}",
        diagnose=lambda: f"seen: {seen}\n" + cluster.diagnose_namespace(ns),
    )


def _busybox(**fields: Any) -> dict[str, Any]:
    return {"name": "main", "image": "kopflet/busybox:local", **fields}


def test_each_bad_spec_is_reported_and_the_node_keeps_serving(
    faults_cluster: FaultCluster, faults_namespace: str
) -> None:
    cluster, ns = faults_cluster, faults_namespace
    node = cluster.nodes[0]
    agent_before = cluster.component("agent", node.name)
    controller_before = cluster.component("controller")
    cluster.kubectl("-n", ns, "create", "configmap", "settings", "--from-literal=present=yes")

    # name -> (container, extra volumes, container name, reasons accepted, text in the message)
    cases: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]] | None, str, set[str], str]]
    cases = {
        "missing-image": (
            [_busybox(image="kopflet/does-not-exist:v1", imagePullPolicy="Never")],
            None,
            "main",
            {"ErrImageNeverPull"},
            "kopflet/does-not-exist:v1",
        ),
        "no-such-command": (
            [_busybox(command=["/no/such/command"])],
            None,
            "main",
            {"StartError", "CreateContainerError", "RunContainerError", "CrashLoopBackOff"},
            "no such file",
        ),
        "missing-key": (
            [
                _busybox(
                    command=["sleep", "3600"],
                    env=[
                        {
                            "name": "SETTING",
                            "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "absent"}},
                        }
                    ],
                )
            ],
            None,
            "main",
            {"CreateContainerConfigError"},
            "couldn't find key absent in ConfigMap",
        ),
        "port-in-use": (
            [
                _busybox(name="first", command=["httpd", "-f", "-p", "8080"]),
                _busybox(name="second", command=["httpd", "-f", "-p", "8080"]),
            ],
            None,
            "second",
            {"Error", "CrashLoopBackOff"},
            "in use",
        ),
        "uncreatable-mount": (
            [
                _busybox(
                    command=["sleep", "3600"],
                    volumeMounts=[{"name": "scratch", "mountPath": "/bin/busybox/scratch"}],
                )
            ],
            [{"name": "scratch", "emptyDir": {}}],
            "main",
            {"StartError", "CreateContainerError", "RunContainerError", "CrashLoopBackOff"},
            "not a directory",
        ),
    }
    for name, (containers, volumes, _, _, _) in cases.items():
        body = bare_instance(name, node=node.name, volumes=volumes)
        body["spec"]["containers"] = containers
        create_instance(cluster, ns, body)

    for name, (_, _, container, reasons, text) in cases.items():
        _wait_reported(cluster, ns, name, container=container, reasons=reasons, text=text)
        status_reason = (_instance(cluster, ns, name).get("status") or {}).get("reason")
        assert status_reason not in (None, "", "Running"), (name, status_reason)

    # The same node and the controller still serve everything else.
    create_instance(
        cluster,
        ns,
        bare_instance("healthy", node=node.name, container={"command": ["sleep", "3600"]}),
    )
    cluster.apply(ns, web_workload("web", replicas=2, version="v1"))
    wait_for(
        lambda: (_instance(cluster, ns, "healthy").get("status") or {}).get("phase") == "Running",
        timeout=120,
        message="a good instance beside the bad ones runs",
        diagnose=lambda: cluster.diagnose_namespace(ns),
    )
    assert_converged(cluster, ns, "web", 2, timeout=180)
    # A key added later is picked up: the missing-key instance starts without being touched.
    cluster.kubectl(
        "-n",
        ns,
        "patch",
        "configmap",
        "settings",
        "--type=merge",
        "-p",
        '{"data":{"absent":"now"}}',
    )
    wait_for(
        lambda: (
            (_instance(cluster, ns, "missing-key").get("status") or {}).get("phase") == "Running"
        ),
        timeout=90,
        message="missing-key runs once its key exists",
        diagnose=lambda: cluster.diagnose_namespace(ns),
    )
    time.sleep(1)
    agent_after = cluster.component("agent", node.name)
    controller_after = cluster.component("controller")
    assert (agent_after.pid, agent_after.restarts) == (agent_before.pid, agent_before.restarts)
    assert (controller_after.pid, controller_after.restarts) == (
        controller_before.pid,
        controller_before.restarts,
    )
