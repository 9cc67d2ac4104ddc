"""The local cluster itself: control plane, one engine per node, node-to-node traffic, real
credentials, supervision, and ``kopflet down`` leaving nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import docker
import pytest

from conftest import TestCluster, _check_infrastructure
from kopflet.local import cluster as local_cluster
from kopflet.local import images
from kopflet.local.config import ClusterConfig
from kopflet.local.controlplane import admin_ssl_context
from kopflet.local.nodes import engine_answers
from kopflet.local.pki import Pki
from kopflet.local.supervisor import read_status
from support import wait_for


def test_apiserver_answers_readyz_over_tls_with_client_certificates(
    cluster: TestCluster,
) -> None:
    context = admin_ssl_context(Pki(cluster.config.pki_dir))
    with urllib.request.urlopen(
        f"{cluster.config.apiserver_url}/readyz", context=context, timeout=10
    ) as response:
        assert response.status == 200
        assert response.read() == b"ok"


def test_kubectl_reports_the_pinned_release(cluster: TestCluster) -> None:
    from kopflet.local.binaries import KUBERNETES_VERSION

    out = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert out["clientVersion"]["gitVersion"] == f"v{KUBERNETES_VERSION}"
    assert out["serverVersion"]["gitVersion"] == f"v{KUBERNETES_VERSION}"


def test_controller_manager_garbage_collects_owned_objects(
    cluster: TestCluster, namespace: str
) -> None:
    cluster.kubectl("-n", namespace, "create", "configmap", "owner")
    uid = cluster.kubectl(
        "-n", namespace, "get", "configmap", "owner", "-o", "jsonpath={.metadata.uid}"
    ).stdout
    owned = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned",
            "namespace": namespace,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
            ],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(owned))
    cluster.kubectl("-n", namespace, "delete", "configmap", "owner")
    wait_for(
        lambda: (
            cluster.kubectl("-n", namespace, "get", "configmap", "owned", check=False).returncode
            != 0
        ),
        timeout=30,
        message="kube-controller-manager's garbage collector removes the owned object",
    )


def test_every_node_has_its_own_engine_with_the_test_images(cluster: TestCluster) -> None:
    expected = images.busybox_image().reference
    for node in cluster.nodes:
        client = cluster.docker(node)
        try:
            assert client.ping()
            # Each answers on its own socket from its own data root.
            assert client.info()["DockerRootDir"] == str(node.data_dir / "docker")
            assert expected in {tag for image in client.images.list() for tag in image.tags}
        finally:
            client.close()


def test_container_on_node_1_is_reachable_by_ip_from_node_2(cluster: TestCluster) -> None:
    first, second = cluster.nodes[0], cluster.nodes[1]
    subnet, address = "10.250.1.0/24", "10.250.1.10"
    client = cluster.docker(first)
    for stale in client.containers.list(all=True, filters={"label": "dev.kopflet.test=reach"}):
        stale.remove(force=True)
    for stale in client.networks.list(names=["kopflet-test-reach"]):
        stale.reload()
        # An endpoint can outlive its container; it is known by the container's name then.
        for endpoint in (stale.attrs.get("Containers") or {}).values():
            stale.disconnect(endpoint["Name"], force=True)
        stale.remove()
    network = client.networks.create(
        "kopflet-test-reach",
        driver="bridge",
        ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)]),
        options={"com.docker.network.bridge.enable_ip_masquerade": "false"},
    )
    container = None
    try:
        created = client.api.create_container(
            images.busybox_image().reference,
            ["httpd", "-f", "-p", "8080", "-h", "/www"],
            labels={"dev.kopflet.test": "reach"},
            host_config=client.api.create_host_config(network_mode=network.name),
            networking_config=client.api.create_networking_config(
                {network.name: client.api.create_endpoint_config(ipv4_address=address)}
            ),
        )
        container = client.containers.get(created["Id"])
        container.start()
        # Docker forwards only published ports into its bridges; routed traffic from another
        # node needs an accept in DOCKER-USER, the chain Docker keeps for its users.
        accept = ["-d", subnet, "-j", "ACCEPT"]
        cluster.in_node(first, "iptables", "-I", "DOCKER-USER", *accept, check=True)
        cluster.in_node(second, "ip", "route", "replace", subnet, "via", first.address, check=True)
        probe = (
            "import socket,sys\n"
            f"s=socket.create_connection(('{address}',8080),timeout=3)\n"
            "s.sendall(b'GET /index.html HTTP/1.0\\r\\n\\r\\n')\n"
            "data=b''\n"
            "while chunk:=s.recv(4096): data+=chunk\n"
            "sys.stdout.write(data.decode())\n"
        )
        answer = wait_for(
            lambda: (
                (r := cluster.in_node(second, sys.executable, "-c", probe)).returncode == 0
                and r.stdout
            ),
            timeout=20,
            message=f"{address} on {first.name} answers from {second.name}",
            diagnose=lambda: (
                cluster.in_node(second, sys.executable, "-c", probe).stderr
                + f"\ncontainer state: {client.containers.get(created['Id']).attrs['State']}"
            ),
        )
        assert "200 OK" in answer and "kopflet" in answer
    finally:
        cluster.in_node(second, "ip", "route", "del", subnet)
        cluster.in_node(first, "iptables", "-D", "DOCKER-USER", "-d", subnet, "-j", "ACCEPT")
        if container is not None:
            container.remove(force=True)
        # The endpoint is released just after the container is gone.
        wait_for(lambda: _removed(network), timeout=20, message="test network removed")
        client.close()


def _removed(network: docker.models.networks.Network) -> bool:
    try:
        network.remove()
    except docker.errors.NotFound:
        return True
    except docker.errors.APIError:
        return False
    return True


def test_agent_credentials_are_refused_outside_their_grant(cluster: TestCluster) -> None:
    agent = cluster.config.state_dir / "kopflet-agent.kubeconfig"
    allowed = cluster.kubectl("get", "configmaps", "-A", kubeconfig=agent, check=False)
    assert allowed.returncode == 0, allowed.stderr
    for args in (
        ("get", "pods", "-A"),
        ("create", "namespace", "agent-may-not"),
        ("-n", "kube-system", "delete", "configmap", "--all"),
    ):
        refused = cluster.kubectl(*args, kubeconfig=agent, check=False)
        assert refused.returncode != 0
        assert "Forbidden" in refused.stderr, refused.stderr
        assert "system:serviceaccount:kopflet-system:kopflet-agent" in refused.stderr


def test_supervisor_restarts_a_component_that_dies(cluster: TestCluster) -> None:
    node = cluster.nodes[-1]

    def dockerd_state() -> tuple[int | None, int]:
        status = read_status(cluster.config.status_file)
        assert status is not None
        for component in status.components:
            if component.name == "dockerd" and component.node == node.name:
                return component.pid, component.restarts
        raise AssertionError(f"no dockerd of {node.name} in the status")

    pid, restarts = dockerd_state()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: dockerd_state()[1] >= restarts + 1 and dockerd_state()[0] not in (None, pid),
        timeout=30,
        message=f"dockerd of {node.name} restarted by the supervisor",
    )
    wait_for(
        lambda: engine_answers(node.docker_host), timeout=60, message="the restarted engine answers"
    )

    def shown_row() -> list[str] | None:
        shown = subprocess.run(
            [
                sys.executable,
                "-m",
                "kopflet",
                "status",
                "--name",
                cluster.config.name,
                "--index",
                str(cluster.config.index),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        row = next(
            line.split()
            for line in shown.splitlines()
            if line.split()[:2] == ["dockerd", node.name]
        )
        # COMPONENT NODE STATE PID RESTARTS
        return row if row[2] == "running" else None

    row = wait_for(shown_row, timeout=30, message="`kopflet status` shows the engine running")
    # A SIGKILLed dockerd leaves its containerd behind, and a new dockerd may need a second
    # start while the old one lets go: at least one restart, never none.
    assert int(row[4]) >= restarts + 1


def _leftovers(config: ClusterConfig) -> list[str]:
    found = []
    netns = Path("/run/netns")
    if netns.is_dir():
        found += [
            f"netns {p.name}"
            for p in netns.iterdir()
            if p.name.startswith(f"kopflet{config.index}-")
        ]
    links = Path("/sys/class/net")
    found += [
        f"link {p.name}"
        for p in links.iterdir()
        if p.name == config.bridge or p.name.startswith(f"kf{config.index}n")
    ]
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout
    found += [f"route {r}" for r in routes.splitlines() if config.bridge in r]
    for tool in ("iptables-save", "ip6tables-save"):
        rules = subprocess.run([tool], capture_output=True, text=True, check=False).stdout
        found += [
            f"{tool}: {line}"
            for line in rules.splitlines()
            if "kopflet" in line.lower() or "KFL-" in line
        ]
    with open("/proc/self/mountinfo") as f:
        found += [
            f"mount {line.split()[4]}"
            for line in f
            if str(config.state_dir) in line or str(config.run_dir) in line
        ]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if str(config.state_dir).encode() in cmdline or str(config.run_dir).encode() in cmdline:
                found.append(f"process {proc.name}: {cmdline[:120]!r}")
    if config.state_dir.exists() or config.run_dir.exists():
        found.append("directories")
    return found


@pytest.mark.timeout(900)
def test_up_reports_a_running_cluster_and_down_removes_everything_even_after_a_crash(
    cluster: TestCluster,
) -> None:
    """A second, two-node cluster of its own: up, up again, a crashed supervisor, `kopflet down`
    by its name alone, down twice more."""
    _check_infrastructure()
    config = ClusterConfig(name="kopflet-downtest", index=2, nodes=2)
    local_cluster.down(config)
    try:
        first = local_cluster.up(config)
        assert first.phase == "Ready"
        again = local_cluster.up(config)
        assert again.supervisor_pid == first.supervisor_pid
        assert _leftovers(config) != []  # it really made things
        # A supervisor killed outright leaves its children, namespaces and mounts behind.
        os.kill(first.supervisor_pid, signal.SIGKILL)
        time.sleep(1)
        assert local_cluster.status(config) is None
        # Named only, as a user types it: the cluster's own index (2) is found, not the
        # default's bridge and namespaces.
        subprocess.run(
            [sys.executable, "-m", "kopflet", "down", "--name", config.name],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        assert _leftovers(config) == []
    finally:
        local_cluster.down(config)
    assert _leftovers(config) == []
    local_cluster.down(config)
    assert _leftovers(config) == []


@pytest.mark.timeout(600)
def test_down_in_the_process_that_ran_up_does_not_wait_out_its_deadline(
    cluster: TestCluster,
) -> None:
    """The test session's own case: the supervisor is a child of the process calling down, so
    once stopped it is a zombie, still in /proc, until collected. down must take it for gone
    at once rather than wait its 120 s deadline for /proc to let go of it."""
    _check_infrastructure()
    config = ClusterConfig(name="kopflet-downtest", index=2, nodes=1)
    local_cluster.down(config)
    try:
        local_cluster.up(config)
        started = time.monotonic()
        local_cluster.down(config)
        took = time.monotonic() - started
    finally:
        local_cluster.down(config)
    # A stop takes seconds; 60 s is far from that and as far from the 120 s deadline.
    assert took < 60, f"down took {took:.0f} s: it waited for a supervisor already stopped"
    assert _leftovers(config) == []
