"""Instances through the whole agent: bound in the API, run on their node, reported back."""

from __future__ import annotations

import base64
import ipaddress
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from agent_nodes import (
    Admin,
    Agents,
    admin_api,
    agents,
    containers_of,
    instance_body,
    running_ready,
    sh,
)

from conftest import TestCluster
from kopflet.agent.runtime.labels import CONTAINER_NAME_LABEL, INSTANCE_IP_LABEL, ROLE_LABEL
from kopflet.api.constants import GROUP, INSTANCE_PLURAL, VERSION
from support import wait_for

pytestmark = pytest.mark.integration
__all__ = ["admin_api", "agents"]

FINALIZER = "kopflet.dev/agent"


def wait_running(
    cluster: TestCluster, admin_api: Admin, namespace: str, name: str, timeout: float = 60
) -> dict[str, Any]:
    found: dict[str, Any] = wait_for(
        lambda: (
            (obj := admin_api.instance(namespace, name)) is not None and running_ready(obj) and obj
        ),
        timeout=timeout,
        message=f"instance {name} Running and Ready",
        diagnose=lambda: cluster.diagnose("instance", name, namespace),
    )
    return found


def test_instance_bound_to_node_2_runs_there_and_reports_running_ready(
    cluster: TestCluster, agents: Agents, admin_api: Admin, namespace: str
) -> None:
    node = cluster.nodes[1]
    body = instance_body(
        "web", node=node.name, containers=[{"name": "main", "command": ["sleep", "3600"]}]
    )
    created = admin_api.create_instance(namespace, body)
    obj = wait_running(cluster, admin_api, namespace, "web")
    uid = created["metadata"]["uid"]
    status = obj["status"]
    subnet = ipaddress.ip_network(admin_api.node_agent(node.name)["spec"]["instanceCIDR"])
    assert ipaddress.ip_address(status["instanceIP"]) in subnet
    assert status["hostIP"] == node.address and status["startTime"]
    [container] = status["containerStatuses"]
    assert container["name"] == "main" and container["ready"] and container["started"]
    assert container["restartCount"] == 0 and container["containerID"].startswith("docker://")
    assert "running" in container["state"]
    assert {c["type"] for c in status["conditions"]} >= {"Initialized", "ContainersReady", "Ready"}
    assert FINALIZER in obj["metadata"]["finalizers"]
    # Bound by hand, not by the scheduler: the agent put its finalizer on itself. Its writes
    # carry its own field manager, as the kubelet's carry "kubelet".
    managers = {(e["manager"], e.get("subresource", "")) for e in obj["metadata"]["managedFields"]}
    assert {("kopflet-agent", ""), ("kopflet-agent", "status")} <= managers, managers
    # On node-2's engine, and there only: the one container, labelled with the uid, holding
    # the instance's address itself (an instance of one container has no sandbox).
    on_node = containers_of(cluster, node, uid)
    roles = sorted((c["Labels"][ROLE_LABEL], c["Labels"][CONTAINER_NAME_LABEL]) for c in on_node)
    assert roles == [("app", "main")], roles
    assert all(c["State"] == "running" for c in on_node)
    [held] = on_node
    assert held["Labels"][INSTANCE_IP_LABEL] == status["instanceIP"]
    addresses = [n["IPAddress"] for n in held["NetworkSettings"]["Networks"].values()]
    assert addresses == [status["instanceIP"]], addresses
    for other in (cluster.nodes[0], cluster.nodes[2]):
        assert containers_of(cluster, other, uid) == []


def test_a_stale_status_landing_over_the_agents_is_written_over_again(
    cluster: TestCluster, agents: Agents, admin_api: Admin, namespace: str
) -> None:
    # A status write that timed out while the API server was frozen may land after a newer
    # one. Here the late write is the admin's: the Instance's first status, sent again.
    node = cluster.nodes[0]
    body = instance_body(
        "late", node=node.name, containers=[{"name": "main", "command": ["sleep", "3600"]}]
    )
    admin_api.create_instance(namespace, body)
    ready = wait_running(cluster, admin_api, namespace, "late")
    stale = {
        "phase": "Pending",
        "reason": "ContainerCreating",
        "conditions": [
            {**c, "status": "False"} if c["type"] in ("Ready", "ContainersReady") else c
            for c in ready["status"]["conditions"]
        ],
        "containerStatuses": None,
    }
    # What the write stored, from its own answer: the agent may write over it before a read.
    landed = admin_api.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, INSTANCE_PLURAL, "late", {"status": stale}
    )
    assert not running_ready(landed)
    restored = wait_running(cluster, admin_api, namespace, "late", timeout=15)
    assert restored["status"]["containerStatuses"] == ready["status"]["containerStatuses"]
    assert restored["status"]["startTime"] == ready["status"]["startTime"]


def test_deleting_an_instance_waits_out_its_grace_then_the_object_goes_away(
    cluster: TestCluster, agents: Agents, admin_api: Admin, namespace: str
) -> None:
    node = cluster.nodes[1]
    # The stop signal is trapped: the container lingers 2 s in its grace period (5 s).
    linger = "trap 'echo got TERM; sleep 2; exit 0' TERM; while true; do sleep 0.2; done"
    body = instance_body(
        "slow",
        node=node.name,
        containers=[{"name": "main", "command": sh(linger)}],
        terminationGracePeriodSeconds=5,
    )
    uid = admin_api.create_instance(namespace, body)["metadata"]["uid"]
    wait_running(cluster, admin_api, namespace, "slow")
    admin_api.delete_instance(namespace, "slow")
    deleted_at = time.monotonic()
    time.sleep(1)
    held = admin_api.instance(namespace, "slow")
    assert held is not None and held["metadata"].get("deletionTimestamp"), "finalizer holds it"
    wait_for(
        lambda: admin_api.instance(namespace, "slow") is None,
        timeout=30,
        message="the deleted instance goes away once its containers are gone",
        diagnose=lambda: cluster.diagnose("instance", "slow", namespace),
    )
    took = time.monotonic() - deleted_at
    assert took >= 1.9, f"gone after {took:.1f}s: the grace period was not waited out"
    assert containers_of(cluster, node, uid) == []


def test_env_comes_from_config_map_and_secret_and_a_missing_key_is_reported_then_healed(
    cluster: TestCluster, agents: Agents, admin_api: Admin, namespace: str
) -> None:
    node = cluster.nodes[2]
    admin_api.core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "settings"}, "data": {"greeting": "hello"}}
    )
    admin_api.core.create_namespaced_secret(
        namespace,
        {"metadata": {"name": "creds"}, "data": {"password": base64.b64encode(b"s3cret").decode()}},
    )
    env = [
        {
            "name": "GREETING",
            "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}},
        },
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
    ]
    script = 'echo "env: $GREETING $PASSWORD $NODE"; exec sleep 3600'
    admin_api.create_instance(
        namespace,
        instance_body(
            "env", node=node.name, containers=[{"name": "main", "command": sh(script), "env": env}]
        ),
    )
    wait_running(cluster, admin_api, namespace, "env")
    logs = kopflet_logs(cluster, namespace, "env")
    assert f"env: hello s3cret {node.name}" in logs, logs

    missing = [
        {"name": "COLOUR", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "colour"}}}
    ]
    admin_api.create_instance(
        namespace,
        instance_body(
            "missing",
            node=node.name,
            containers=[
                {
                    "name": "main",
                    "command": sh('echo "colour: $COLOUR"; exec sleep 3600'),
                    "env": missing,
                }
            ],
        ),
    )

    def waiting_reason() -> str | None:
        obj = admin_api.instance(namespace, "missing") or {}
        statuses = (obj.get("status") or {}).get("containerStatuses") or []
        waiting = ((statuses[0].get("state") or {}).get("waiting") or {}) if statuses else {}
        return waiting.get("reason")

    wait_for(
        lambda: waiting_reason() == "CreateContainerConfigError",
        timeout=60,
        message="a missing key is reported as CreateContainerConfigError",
        diagnose=lambda: cluster.diagnose("instance", "missing", namespace),
    )
    # The key appears: the ConfigMap's watch wakes the instance, which starts.
    admin_api.core.patch_namespaced_config_map(
        "settings", namespace, {"data": {"greeting": "hello", "colour": "blue"}}
    )
    wait_running(cluster, admin_api, namespace, "missing", timeout=60)
    assert "colour: blue" in kopflet_logs(cluster, namespace, "missing")


def kopflet_logs(cluster: TestCluster, namespace: str, name: str, *args: str) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kopflet",
            "logs",
            name,
            "-n",
            namespace,
            "--kubeconfig",
            str(cluster.kubeconfig),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_kopflet_logs_prints_each_containers_output_and_the_previous_attempts(
    cluster: TestCluster, agents: Agents, admin_api: Admin, namespace: str
) -> None:
    node = cluster.nodes[0]
    counting = "for i in 1 2 3; do echo line-$i; done; exec sleep 3600"
    # Runs 2 s, prints its attempt, then fails: the next attempt comes after the 10 s back-off.
    attempt = "echo started-at-$(date +%s); sleep 2; exit 1"
    admin_api.create_instance(
        namespace,
        instance_body(
            "talk",
            node=node.name,
            containers=[
                {"name": "counter", "command": sh(counting)},
                {"name": "crasher", "command": sh(attempt)},
            ],
        ),
    )

    def counter_started() -> bool:
        obj = admin_api.instance(namespace, "talk") or {}
        statuses = (obj.get("status") or {}).get("containerStatuses") or []
        return any(s["name"] == "counter" and "running" in (s.get("state") or {}) for s in statuses)

    # Until the agent reports the container, `kopflet logs` rightly says it is not there yet.
    wait_for(
        counter_started,
        timeout=60,
        message="the counter running",
        diagnose=lambda: cluster.diagnose("instance", "talk", namespace),
    )
    wait_for(
        lambda: "line-3" in kopflet_logs(cluster, namespace, "talk", "-c", "counter"),
        timeout=60,
        message="the counter's output",
        diagnose=lambda: cluster.diagnose("instance", "talk", namespace),
    )
    assert kopflet_logs(cluster, namespace, "talk", "-c", "counter", "--tail", "1") == "line-3\n"
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "kopflet",
            "logs",
            "talk",
            "-n",
            namespace,
            "--kubeconfig",
            str(cluster.kubeconfig),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0 and "counter, crasher" in refused.stderr

    def restarted() -> bool:
        obj = admin_api.instance(namespace, "talk") or {}
        statuses = (obj.get("status") or {}).get("containerStatuses") or []
        return any(s["name"] == "crasher" and s["restartCount"] >= 1 for s in statuses)

    wait_for(
        restarted,
        timeout=60,
        message="the crasher restarted once",
        diagnose=lambda: cluster.diagnose("instance", "talk", namespace),
    )
    previous = kopflet_logs(cluster, namespace, "talk", "-c", "crasher", "--previous")
    current = kopflet_logs(cluster, namespace, "talk", "-c", "crasher")
    assert previous.startswith("started-at-") and current.startswith("started-at-")
    assert int(previous.split("-")[-1]) < int(current.split("-")[-1])


def test_kopflet_logs_follow_streams_new_output_as_it_comes(
    cluster: TestCluster, agents: Agents, admin_api: Admin, namespace: str
) -> None:
    ticking = "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 1; done"
    admin_api.create_instance(
        namespace,
        instance_body(
            "ticker",
            node=cluster.nodes[2].name,
            containers=[{"name": "main", "command": sh(ticking)}],
        ),
    )
    wait_running(cluster, admin_api, namespace, "ticker")
    follow = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kopflet",
            "logs",
            "ticker",
            "-n",
            namespace,
            "-f",
            "--tail",
            "1",
            "--kubeconfig",
            str(cluster.kubeconfig),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    # A thread reads, so that a stream that stalls cannot hang the test past its deadline.
    reader = threading.Thread(
        target=lambda: lines.extend(iter(follow.stdout.readline, "")) if follow.stdout else None,
        daemon=True,
    )
    reader.start()
    try:
        wait_for(
            lambda: len(lines) >= 4,
            timeout=60,
            message="four ticks followed",
            diagnose=lambda: cluster.diagnose("instance", "ticker", namespace),
        )
    finally:
        follow.terminate()
        follow.wait(timeout=30)
    ticks = [int(line.strip().removeprefix("tick-")) for line in lines[:4]]
    assert ticks == list(range(ticks[0], ticks[0] + 4)), ticks


def test_kubectl_describe_instance_tells_the_story(
    cluster: TestCluster, agents: Agents, admin_api: Admin, namespace: str
) -> None:
    node = cluster.nodes[0]
    admin_api.create_instance(
        namespace,
        instance_body(
            "story", node=node.name, containers=[{"name": "main", "command": sh("exit 3")}]
        ),
    )

    def described() -> str | None:
        text = cluster.kubectl("describe", "instance", "story", "-n", namespace).stdout
        wanted = ("Created", "Started", "BackOff")
        return text if all(f"  {w} " in text for w in wanted) else None

    text: str = wait_for(
        described,
        timeout=60,
        message="describe shows Created, Started and BackOff events",
        diagnose=lambda: cluster.kubectl("describe", "instance", "story", "-n", namespace).stdout,
    )
    assert "kopflet.dev/agent" in text and "Back-off restarting failed container main" in text
    # In the order they first happened, as `kubectl describe` shows a pod's: it keeps the
    # order the API server lists them in, by name.
    events = text[text.index("\nEvents:") :]
    firsts = [events.index(f"  {w} ") for w in ("Created", "Started", "BackOff")]
    assert firsts == sorted(firsts), events
