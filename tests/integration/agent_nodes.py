"""The test cluster's node agents, and what the agent tests share (no tests here).

* The agents: the cluster's supervised ones when it runs them; otherwise started here as the
  supervisor would start them (each in its node's network namespace, with the agent
  ServiceAccount's kubeconfig and the same flags, logging to the same file), stopped at the
  end of the session. ``kill`` and ``ensure_running`` let a test crash one and bring it back.
* Instance subnets: the controller's node IPAM gives them; when no controller runs, the tests
  set ``spec.instanceCIDR`` themselves (as an admin), inside the cluster CIDR, far from where
  the controller's allocations start.
* An admin API handle with the few calls the tests make.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from conftest import TestCluster
from kopflet.agent.runtime.labels import INSTANCE_UID_LABEL, NODE_LABEL, ROLE_LABEL
from kopflet.api.constants import (
    GROUP,
    INSTANCE_PLURAL,
    NODE_LEASE_NAMESPACE,
    NODEAGENT_PLURAL,
    PROXYSERVICE_PLURAL,
    VERSION,
)
from kopflet.local import bootstrap, images
from kopflet.local.config import NodeConfig
from kopflet.local.pki import Pki
from kopflet.local.supervisor import read_status
from support import wait_for

IMAGE = images.BUSYBOX_IMAGE
#: Subnets the tests give nodes when no controller does it (node-N gets the N-th).
TEST_SUBNET = "10.244.{}.0/24"
TEST_SUBNET_BASE = 200


def now() -> datetime:
    return datetime.now(UTC)


class Admin:
    """The admin's view of the cluster, in the shapes the agent tests need."""

    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        self.client = client
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.core = kubernetes.client.CoreV1Api(client)
        self.coordination = kubernetes.client.CoordinationV1Api(client)

    def node_agent(self, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.custom.get_cluster_custom_object(
                GROUP, VERSION, NODEAGENT_PLURAL, name
            )
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return None
            raise
        return found

    def instance(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, INSTANCE_PLURAL, name
            )
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return None
            raise
        return found

    def create_instance(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, INSTANCE_PLURAL, body
        )
        return created

    def delete_instance(self, namespace: str, name: str) -> None:
        with contextlib.suppress(kubernetes.client.ApiException):
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, INSTANCE_PLURAL, name
            )

    def patch_instance(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, INSTANCE_PLURAL, name, patch
        )

    def create_service(self, namespace: str, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PROXYSERVICE_PLURAL, body
        )

    def patch_service_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PROXYSERVICE_PLURAL, name, {"status": status}
        )

    def lease_renew_time(self, node: str) -> datetime | None:
        try:
            lease = self.coordination.read_namespaced_lease(node, NODE_LEASE_NAMESPACE)
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return None
            raise
        renewed: datetime | None = lease.spec.renew_time if lease.spec else None
        return renewed


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), None)


def is_ready(obj: dict[str, Any] | None) -> bool:
    found = condition(obj, "Ready")
    return found is not None and found.get("status") == "True"


class Agents:
    def __init__(self, cluster: TestCluster, admin: Admin) -> None:
        self.cluster = cluster
        self.admin = admin
        self.kubeconfig = cluster.config.state_dir / f"{bootstrap.AGENT_SERVICE_ACCOUNT}.kubeconfig"
        self.own: dict[str, subprocess.Popen[bytes]] = {}

    # -- processes -------------------------------------------------------------------------

    def _supervised_pid(self, node: NodeConfig) -> int | None:
        status = read_status(self.cluster.config.status_file)
        for c in status.components if status else []:
            if (c.name, c.node, c.state) == ("agent", node.name, "running") and c.pid:
                return c.pid
        return None

    def _supervised(self, node: NodeConfig) -> bool:
        status = read_status(self.cluster.config.status_file)
        return any(
            c.name == "agent" and c.node == node.name and c.state in ("running", "backoff")
            for c in (status.components if status else [])
        )

    def pid(self, node: NodeConfig) -> int | None:
        own = self.own.get(node.name)
        if own is not None and own.poll() is None:
            return own.pid
        return self._supervised_pid(node)

    def kubeconfig_of(self, node: NodeConfig) -> Path:
        """The node-bound credentials the supervisor gives the agent (written here if the
        running cluster predates them); the node restriction refuses unbound ones."""
        config = self.cluster.config
        if not hasattr(bootstrap, "write_agent_kubeconfigs"):
            return self.kubeconfig
        path: Path = bootstrap.agent_kubeconfig_path(config, node.name)
        if not path.exists():
            bootstrap.write_agent_kubeconfigs(config, Pki(config.pki_dir), [node.name])
        return path

    def start(self, node: NodeConfig) -> None:
        """As the supervisor starts it (``kopflet.local.cluster``): same flags, same log."""
        log_file = self.cluster.config.log_dir / f"{node.name}-agent.log"
        argv = [
            *(sys.executable, "-m", "kopflet", "agent"),
            *("--node-name", node.name),
            *("--docker-host", node.docker_host),
            *("--kubeconfig", str(self.kubeconfig_of(node))),
            *("--state-dir", str(node.data_dir / "agent")),
            *("--sandbox-image", IMAGE),
        ]
        with open(log_file, "ab") as log:
            log.write(f"\n--- {time.strftime('%H:%M:%S')} started by the tests\n".encode())
            log.flush()
            self.own[node.name] = subprocess.Popen(
                ["nsenter", f"--net={node.netns_path}", "--", *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
            )

    def ensure_running(self, node: NodeConfig) -> None:
        own = self.own.get(node.name)
        if own is not None and own.poll() is None:
            return
        if not self._supervised(node):
            self.start(node)

    def kill(self, node: NodeConfig, sig: int = signal.SIGKILL) -> int:
        pid = self.pid(node)
        assert pid is not None, f"no agent runs on {node.name}"
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"agent" in cmdline and node.name.encode() in cmdline, cmdline
        os.kill(pid, sig)
        own = self.own.get(node.name)
        if own is not None and own.pid == pid:
            own.wait(timeout=30)
        else:
            wait_for(
                lambda: not Path(f"/proc/{pid}").exists(), timeout=30, message=f"agent {pid} gone"
            )
        return pid

    def restart(self, node: NodeConfig, *, old_pid: int) -> None:
        """After a kill: ours are started again; the supervisor restarts its own (back-off)."""
        self.ensure_running(node)
        wait_for(
            lambda: (p := self.pid(node)) is not None and p != old_pid,
            timeout=60,
            message=f"the agent of {node.name} runs again",
        )

    def health(self, node: NodeConfig) -> str:
        """The agent's ``/healthz`` answer inside its node, '' while it does not answer."""
        script = (
            "import urllib.request\n"
            "try:\n"
            "    print(urllib.request.urlopen('http://127.0.0.1:10248/healthz', timeout=3)"
            ".read().decode())\n"
            "except Exception as e:\n"
            "    print(getattr(e, 'code', ''))\n"
        )
        return self.cluster.in_node(node, sys.executable, "-c", script).stdout

    def wait_synced(self, node: NodeConfig, *, timeout: float = 90) -> None:
        """Until the (restarted) agent's proxy has synced and its runtime relisted."""
        wait_for(
            lambda: (
                "[+]proxy ok: last successful" in (h := self.health(node))
                and "[+]runtime ok: last relist" in h
            ),
            timeout=timeout,
            message=f"the agent of {node.name} synced",
            diagnose=lambda: self.cluster.log_tail(f"{node.name}-agent.log"),
        )

    def stop_own(self) -> None:
        for process in self.own.values():
            if process.poll() is None:
                process.terminate()
        for process in self.own.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
            if process.poll() is None:
                process.kill()
        self.own.clear()

    # -- the nodes' objects ----------------------------------------------------------------------

    def ensure_subnet(self, node: NodeConfig, *, controller_wait: float = 15.0) -> str:
        """The node's instance subnet: the controller's, or the tests' when none comes."""
        wait_for(
            lambda: self.admin.node_agent(node.name),
            timeout=60,
            message=f"{node.name} registers its NodeAgent",
            diagnose=lambda: self.cluster.log_tail(f"{node.name}-agent.log"),
        )
        deadline = time.monotonic() + controller_wait
        while time.monotonic() < deadline:
            subnet = ((self.admin.node_agent(node.name) or {}).get("spec") or {}).get(
                "instanceCIDR"
            )
            if subnet:
                return str(subnet)
            time.sleep(0.5)
        subnet = TEST_SUBNET.format(TEST_SUBNET_BASE + node.index)
        with contextlib.suppress(kubernetes.client.ApiException):  # a controller was faster
            self.admin.custom.patch_cluster_custom_object(
                GROUP, VERSION, NODEAGENT_PLURAL, node.name, {"spec": {"instanceCIDR": subnet}}
            )
        found = ((self.admin.node_agent(node.name) or {}).get("spec") or {}).get("instanceCIDR")
        assert found, f"{node.name} has no instanceCIDR"
        return str(found)

    def wait_ready(self, node: NodeConfig, *, timeout: float = 90) -> dict[str, Any]:
        ready: dict[str, Any] = wait_for(
            lambda: (obj := self.admin.node_agent(node.name)) is not None and is_ready(obj) and obj,
            timeout=timeout,
            message=f"NodeAgent {node.name} Ready",
            diagnose=lambda: self.cluster.log_tail(f"{node.name}-agent.log"),
        )
        return ready


_SHARED: dict[str, Agents] = {}


@pytest.fixture(scope="session")
def admin_api(cluster: TestCluster) -> Admin:
    return Admin(cluster.api_client())


@pytest.fixture(scope="session")
def agents(cluster: TestCluster, admin_api: Admin) -> Iterator[Agents]:
    """Every node's agent running, its NodeAgent Ready with a subnet."""
    # Imported by several test modules, this fixture exists once per module: share one handle.
    handle = _SHARED.get("agents")
    if handle is None:
        handle = _SHARED["agents"] = Agents(cluster, admin_api)
    for node in cluster.nodes:
        handle.ensure_running(node)
    for node in cluster.nodes:
        handle.ensure_subnet(node)
    for node in cluster.nodes:
        handle.wait_ready(node)
    yield handle
    handle.stop_own()


# -- instances ------------------------------------------------------------------------------------


def instance_body(
    name: str, *, node: str, containers: list[dict[str, Any]], **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "nodeName": node,
        "terminationGracePeriodSeconds": 2,
        "containers": [{"image": IMAGE, "imagePullPolicy": "Never", **c} for c in containers],
    }
    body.update(spec)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Instance",
        "metadata": {"name": name, "labels": {"test": name}},
        "spec": body,
    }


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def web(text: str) -> dict[str, Any]:
    """A container serving ``text`` on port 8080 (busybox httpd; wget crashes here)."""
    script = f"mkdir -p /srv && echo {text} > /srv/index.html && exec httpd -f -p 8080 -h /srv"
    return {"name": "web", "command": sh(script), "ports": [{"containerPort": 8080}]}


def running_ready(obj: dict[str, Any] | None) -> bool:
    status = (obj or {}).get("status") or {}
    return status.get("phase") == "Running" and is_ready(obj)


def containers_of(cluster: TestCluster, node: NodeConfig, uid: str) -> list[dict[str, Any]]:
    """Our containers of one instance on a node's engine (sandbox and app), any state."""
    client = cluster.docker(node)
    try:
        found: list[dict[str, Any]] = client.api.containers(
            all=True,
            filters={"label": [f"{INSTANCE_UID_LABEL}={uid}", f"{NODE_LABEL}={node.name}"]},
        )
    finally:
        client.close()
    return found


def all_ours(cluster: TestCluster, node: NodeConfig) -> list[dict[str, Any]]:
    client = cluster.docker(node)
    try:
        found: list[dict[str, Any]] = client.api.containers(
            all=True, filters={"label": [ROLE_LABEL, f"{NODE_LABEL}={node.name}"]}
        )
    finally:
        client.close()
    return found


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def http_get(
    cluster: TestCluster, node: NodeConfig, address: str, port: int = 8080, timeout: float = 3
) -> str:
    """``GET /`` from the node's network namespace (as the node itself), '' on failure."""
    probe = (
        "import socket,sys\n"
        f"s=socket.create_connection(('{address}',{port}),timeout={timeout})\n"
        "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
        "data=b''\n"
        "while chunk:=s.recv(4096): data+=chunk\n"
        "sys.stdout.write(data.decode(errors='replace'))\n"
    )
    done = cluster.in_node(node, sys.executable, "-c", probe, timeout=timeout + 10)
    return done.stdout if done.returncode == 0 else ""
