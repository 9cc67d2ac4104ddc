"""Workload privileges through the whole stack: privileged mode, hostPath volumes and extra
capabilities are refused unless the node's agent was started allowing them, host networking is
not in the API at all, the engine's socket is never mounted into a workload, and containers run
with no-new-privileges unless they ask for escalation.

Runs on the faults cluster (its supervised agents use the default, strict flags); the
permissive case holds node-3's supervised agent and runs one with the allow flags in its place.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from fault_cluster import (
    FaultCluster,
    bare_instance,
    create_instance,
    faults_cluster,
    faults_namespace,
    waiting_reason,
    warning_events,
)

from kopflet.local import bootstrap, images
from kopflet.local import cluster as local_cluster
from kopflet.local.config import NodeConfig
from support import wait_for

__all__ = ["faults_cluster", "faults_namespace"]

pytestmark = pytest.mark.timeout(600)


def _instance(cluster: FaultCluster, ns: str, name: str) -> dict[str, Any]:
    return cluster.get("instances", name, ns) or {}


def _app_container(cluster: FaultCluster, node: NodeConfig, ns: str, name: str) -> Any:
    for container in cluster.our_containers(node, running_only=False):
        labels = container.labels
        if (
            labels.get("dev.kopflet.role") == "app"
            and labels.get("dev.kopflet.instance-namespace") == ns
            and labels.get("dev.kopflet.instance-name") == name
        ):
            return container
    return None


def _wait_refused(cluster: FaultCluster, ns: str, name: str, message: str) -> None:
    def refused() -> bool:
        waiting = waiting_reason(_instance(cluster, ns, name))
        return (
            waiting is not None
            and waiting[0] == "CreateContainerConfigError"
            and (message in waiting[1])
        )

    wait_for(
        refused,
        timeout=120,
        interval=1,
        message=f"{name} refused with {message!r}",
        diagnose=lambda: cluster.diagnose_namespace(ns),
    )
    wait_for(
        lambda: any(message in e for e in warning_events(cluster, ns, name)),
        timeout=30,
        message=f"a Warning event on {name} saying {message!r}",
    )


def _wait_running(cluster: FaultCluster, ns: str, name: str) -> None:
    wait_for(
        lambda: (_instance(cluster, ns, name).get("status") or {}).get("phase") == "Running",
        timeout=120,
        interval=1,
        message=f"{name} runs",
        diagnose=lambda: cluster.diagnose_namespace(ns),
    )


def test_strict_agent_refuses_privileged_host_path_and_extra_capabilities(
    faults_cluster: FaultCluster, faults_namespace: str
) -> None:
    cluster, ns = faults_cluster, faults_namespace
    node = cluster.nodes[0]
    asks = {
        "privileged": (
            bare_instance(
                "privileged", node=node.name, container={"securityContext": {"privileged": True}}
            ),
            "privileged containers are not allowed on this node",
        ),
        "host-path": (
            bare_instance(
                "host-path",
                node=node.name,
                container={"volumeMounts": [{"name": "etc", "mountPath": "/host-etc"}]},
                volumes=[{"name": "etc", "hostPath": {"path": "/etc"}}],
            ),
            "hostPath volumes are not allowed on this node",
        ),
        "net-admin": (
            bare_instance(
                "net-admin",
                node=node.name,
                container={"securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}},
            ),
            "capabilities NET_ADMIN are not allowed on this node",
        ),
    }
    for body, _ in asks.values():
        create_instance(cluster, ns, body)
    for name, (_, message) in asks.items():
        _wait_refused(cluster, ns, name, message)
        assert _app_container(cluster, node, ns, name) is None, f"{name} got a container"


def test_host_network_is_not_in_the_api(
    faults_cluster: FaultCluster, faults_namespace: str
) -> None:
    cluster, ns = faults_cluster, faults_namespace
    node = cluster.nodes[0]
    body = bare_instance("host-net", node=node.name, extra_spec={"hostNetwork": True})
    manifest = (
        f"apiVersion: {body['apiVersion']}\nkind: Instance\nmetadata: {{name: host-net}}\n"
        f"spec: {{nodeName: {node.name}, hostNetwork: true, containers: "
        f"[{{name: main, image: kopflet/busybox:local, command: [sleep, '3600']}}]}}\n"
    )
    strict = cluster.kubectl("-n", ns, "apply", "-f", "-", input=manifest, check=False)
    assert strict.returncode != 0 and 'unknown field "spec.hostNetwork"' in strict.stderr
    # Without strict validation the API server prunes the field: it never reaches a node.
    cluster.kubectl("-n", ns, "apply", "--validate=false", "-f", "-", input=manifest)
    stored = _instance(cluster, ns, "host-net")
    assert "hostNetwork" not in stored["spec"]
    _wait_running(cluster, ns, "host-net")
    # Its one container holds the instance's network on the node's instance network.
    app = _app_container(cluster, node, ns, "host-net")
    assert app.attrs["HostConfig"]["NetworkMode"] == "kopflet"
    assert list(app.attrs["NetworkSettings"]["Networks"]) == ["kopflet"]


def test_containers_run_with_no_new_privileges_by_default(
    faults_cluster: FaultCluster, faults_namespace: str
) -> None:
    cluster, ns = faults_cluster, faults_namespace
    node = cluster.nodes[0]
    create_instance(cluster, ns, bare_instance("plain", node=node.name))
    create_instance(
        cluster,
        ns,
        bare_instance(
            "escalating",
            node=node.name,
            container={"securityContext": {"allowPrivilegeEscalation": True}},
        ),
    )
    _wait_running(cluster, ns, "plain")
    _wait_running(cluster, ns, "escalating")
    plain = _app_container(cluster, node, ns, "plain")
    assert "no-new-privileges" in (plain.attrs["HostConfig"]["SecurityOpt"] or [])
    code, output = plain.exec_run(["grep", "NoNewPrivs", "/proc/self/status"])
    assert code == 0 and output.decode().split() == ["NoNewPrivs:", "1"]
    escalating = _app_container(cluster, node, ns, "escalating")
    assert "no-new-privileges" not in (escalating.attrs["HostConfig"]["SecurityOpt"] or [])
    # Neither is privileged nor holds more than the default capabilities.
    for container in (plain, escalating):
        assert container.attrs["HostConfig"]["Privileged"] is False
        assert not container.attrs["HostConfig"]["CapAdd"]


@pytest.fixture
def permissive_node(faults_cluster: FaultCluster) -> Iterator[NodeConfig]:
    """node-3 run by an agent started with --allow-privileged, --allow-host-path and
    --allow-capability NET_ADMIN, in place of its supervised (strict) one."""
    cluster = faults_cluster
    node = cluster.nodes[2]
    argv = [
        "nsenter",
        f"--net={node.netns_path}",
        "--",
        sys.executable,
        "-m",
        "kopflet",
        "agent",
        "--node-name",
        node.name,
        "--docker-host",
        node.docker_host,
        "--kubeconfig",
        str(bootstrap.agent_kubeconfig_path(cluster.config, node.name)),
        "--state-dir",
        str(node.data_dir / "agent"),
        "--sandbox-image",
        images.BUSYBOX_IMAGE,
        "--allow-privileged",
        "--allow-host-path",
        "--allow-capability",
        "NET_ADMIN",
    ]
    local_cluster.hold(cluster.config, "agent", node.name)
    log = open(cluster.config.log_dir / f"{node.name}-permissive-agent.log", "ab")  # noqa: SIM115
    process = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )
    try:
        yield node
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
        local_cluster.release(cluster.config, "agent", node.name)


def test_permissive_agent_runs_what_it_allows_but_never_mounts_the_engine_socket(
    faults_cluster: FaultCluster, faults_namespace: str, permissive_node: NodeConfig
) -> None:
    cluster, ns, node = faults_cluster, faults_namespace, permissive_node
    host_dir = node.data_dir / "shared-with-workloads"
    host_dir.mkdir(parents=True, exist_ok=True)
    (host_dir / "hello").write_text("from the host\n")
    allowed = [
        bare_instance(
            "privileged", node=node.name, container={"securityContext": {"privileged": True}}
        ),
        bare_instance(
            "net-admin",
            node=node.name,
            container={"securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}},
        ),
        bare_instance(
            "host-path",
            node=node.name,
            container={"volumeMounts": [{"name": "h", "mountPath": "/host", "readOnly": True}]},
            volumes=[{"name": "h", "hostPath": {"path": str(host_dir)}}],
        ),
    ]
    socket = str(node.docker_socket)
    refused = {
        "socket": socket,
        "socket-dir": str(node.docker_socket.parent),
        "run": "/run",
        "default-socket": "/var/run/docker.sock",
    }
    for body in allowed:
        create_instance(cluster, ns, body)
    for name, path in refused.items():
        create_instance(
            cluster,
            ns,
            bare_instance(
                name,
                node=node.name,
                container={"volumeMounts": [{"name": "h", "mountPath": "/engine"}]},
                volumes=[{"name": "h", "hostPath": {"path": path}}],
            ),
        )
    for name in ("net-admin", "host-path"):
        _wait_running(cluster, ns, name)
    # Privileged passes the agent's policy and reaches the engine as privileged. Whether it
    # then starts depends on the host: one whose root lacks a capability (some VMs) cannot run
    # a privileged container at all, and says so as a start error, not as our refusal.
    wait_for(
        lambda: (
            (c := _app_container(cluster, node, ns, "privileged")) is not None
            and c.attrs["HostConfig"]["Privileged"] is True
        ),
        timeout=120,
        message="a privileged container created",
        diagnose=lambda: cluster.diagnose_namespace(ns),
    )
    waiting = waiting_reason(_instance(cluster, ns, "privileged"))
    assert waiting is None or waiting[0] != "CreateContainerConfigError", waiting
    assert _app_container(cluster, node, ns, "net-admin").attrs["HostConfig"]["CapAdd"] == [
        "NET_ADMIN"
    ]
    code, output = _app_container(cluster, node, ns, "host-path").exec_run(["cat", "/host/hello"])
    assert code == 0 and output.decode() == "from the host\n"

    for name in refused:
        _wait_refused(cluster, ns, name, "would expose the container engine's socket")
        assert _app_container(cluster, node, ns, name) is None
    # Whatever runs on the node, no container of ours has the socket in its mounts.
    for container in cluster.our_containers(node, running_only=False):
        sources = {m.get("Source", "") for m in container.attrs.get("Mounts") or []}
        assert not any(
            (s and socket.startswith(s.rstrip("/") + "/")) or s == socket for s in sources
        )
