"""What the controller's integration tests share (no tests here): the controller itself, fake
nodes, and a stand-in agent.

* The controller: the cluster's supervised one when it runs; otherwise one started here as the
  supervisor would start it (same ServiceAccount kubeconfig, same flags), stopped at the end.
* Fake nodes: NodeAgents named ``fake-<id>`` with labels unique to the test, a Ready condition
  and allocatable resources, and a Lease renewed by a thread — real nodes never receive a test
  Instance, and the fakes never disturb others' tests.
* A stand-in agent for those fake nodes: it reports bound Instances Running and Ready with an
  address from the node's subnet, holds them with a finalizer, and releases it when they are
  deleted, as the real agent does after stopping the containers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from conftest import TestCluster
from kopflet.api.constants import (
    AGENT_FINALIZER,
    GROUP,
    INSTANCE_PLURAL,
    NODE_LEASE_NAMESPACE,
    NODE_NAME_LABEL,
    NODEAGENT_PLURAL,
    PROXYSERVICE_PLURAL,
    SYSTEM_NAMESPACE,
    VERSION,
    WORKLOAD_PLURAL,
)
from kopflet.local import bootstrap
from kopflet.local.supervisor import read_status
from support import wait_for

LEADER_LEASE = "kopflet-controller"
TEST_IMAGE = "kopflet/busybox:1.35.0"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Api:
    """The admin's view of the cluster, in the few shapes the tests need."""

    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        self.client = client
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.coordination = kubernetes.client.CoordinationV1Api(client)
        self.core = kubernetes.client.CoreV1Api(client)

    def get(self, plural: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            if namespace is None:
                return self.custom.get_cluster_custom_object(GROUP, VERSION, plural, name)  # type: ignore[no-any-return]
            return self.custom.get_namespaced_custom_object(  # type: ignore[no-any-return]
                GROUP, VERSION, namespace, plural, name
            )
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return None
            raise

    def list(
        self, plural: str, namespace: str | None = None, *, labels: str | None = None
    ) -> list[dict[str, Any]]:
        if namespace is None:
            found = self.custom.list_cluster_custom_object(
                GROUP, VERSION, plural, label_selector=labels or ""
            )
        else:
            found = self.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, label_selector=labels or ""
            )
        return list(found.get("items", []))

    def create(self, plural: str, body: dict[str, Any], namespace: str | None = None) -> Any:
        if namespace is None:
            return self.custom.create_cluster_custom_object(GROUP, VERSION, plural, body)
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)

    def patch(
        self,
        plural: str,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        status: bool = False,
    ) -> Any:
        args: tuple[Any, ...]
        if namespace is None:
            fn = (
                self.custom.patch_cluster_custom_object_status
                if status
                else self.custom.patch_cluster_custom_object
            )
            args = (GROUP, VERSION, plural, name, patch)
        else:
            fn = (
                self.custom.patch_namespaced_custom_object_status
                if status
                else self.custom.patch_namespaced_custom_object
            )
            args = (GROUP, VERSION, namespace, plural, name, patch)
        return fn(*args)

    def delete(self, plural: str, name: str, namespace: str | None = None) -> None:
        with contextlib.suppress(kubernetes.client.ApiException):
            if namespace is None:
                self.custom.delete_cluster_custom_object(GROUP, VERSION, plural, name)
            else:
                self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


# --- the controller --------------------------------------------------------------------------


class Controllers:
    """The controller processes of the test cluster: the leader, and the replicas started here."""

    def __init__(self, cluster: TestCluster, api: Api) -> None:
        self.cluster = cluster
        self.api = api
        self.kubeconfig = (
            cluster.config.state_dir / f"{bootstrap.CONTROLLER_SERVICE_ACCOUNT}.kubeconfig"
        )
        self.own: list[subprocess.Popen[bytes]] = []
        self.supervised = False

    def lease(self) -> kubernetes.client.V1Lease | None:
        try:
            return self.api.coordination.read_namespaced_lease(LEADER_LEASE, SYSTEM_NAMESPACE)
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return None
            raise

    def leader(self) -> str | None:
        """The holder's identity if it renewed within the lease duration."""
        lease = self.lease()
        if lease is None or lease.spec is None or not lease.spec.holder_identity:
            return None
        renewed = lease.spec.renew_time
        if renewed is None or (datetime.now(UTC) - renewed).total_seconds() > 10:
            return None
        return str(lease.spec.holder_identity)

    @staticmethod
    def pid_of(identity: str) -> int:
        return int(identity.rsplit("_", 1)[1])

    def _is_our_cluster_controller(self, pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return b"controller" in cmdline and str(self.kubeconfig).encode() in cmdline

    def start_replica(
        self, *extra: str, log_name: str = "controller.log"
    ) -> subprocess.Popen[bytes]:
        log = open(self.cluster.config.log_dir / log_name, "ab")  # noqa: SIM115 (child keeps it)
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kopflet",
                "controller",
                "--kubeconfig",
                str(self.kubeconfig),
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        )
        log.close()
        self.own.append(process)
        return process

    def ensure_running(self) -> str:
        status = read_status(self.cluster.config.status_file)
        components = status.components if status else []
        self.supervised = any(
            c.name == "controller" and c.state in ("running", "backoff") for c in components
        )
        if not self.supervised and not any(p.poll() is None for p in self.own):
            self.start_replica()
        leader: str = wait_for(
            self.leader,
            timeout=60,
            message="a controller holds the lease",
            diagnose=lambda: self.cluster.log_tail("controller.log"),
        )
        return leader

    def kill_leader(self, sig: int = signal.SIGKILL) -> int:
        identity = self.leader()
        assert identity is not None, "no leader to kill"
        pid = self.pid_of(identity)
        assert self._is_our_cluster_controller(pid), f"{identity} is not this cluster's controller"
        os.kill(pid, sig)
        for process in self.own:
            if process.pid == pid:
                process.wait(timeout=30)
        return pid

    def restart_own_if_needed(self) -> None:
        """After killing the leader: the supervisor restarts its controller; ours we restart."""
        if not self.supervised and not any(p.poll() is None for p in self.own):
            self.start_replica()

    def stop_own(self) -> None:
        for process in self.own:
            if process.poll() is None:
                process.terminate()
        for process in self.own:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
            if process.poll() is None:
                process.kill()
        self.own.clear()


def ensure_api_installed(cluster: TestCluster, api: Api) -> None:
    """CRDs and RBAC as the cluster's bootstrap applies them (idempotent): another test may have
    removed a CRD, and the controller's RBAC may be newer than the cluster."""
    bootstrap.apply_api_and_rbac(cluster.binaries, cluster.config)


@pytest.fixture(scope="session")
def admin(cluster: TestCluster) -> Api:
    return Api(cluster.api_client())


_SHARED: dict[str, Controllers] = {}


@pytest.fixture(scope="session")
def controllers(cluster: TestCluster, admin: Api) -> Iterator[Controllers]:
    # Imported by several test modules, this fixture exists once per module: share one handle.
    handle = _SHARED.get("controllers")
    if handle is None:
        ensure_api_installed(cluster, admin)
        handle = _SHARED["controllers"] = Controllers(cluster, admin)
    handle.ensure_running()
    yield handle
    handle.stop_own()


# --- fake nodes and their agent --------------------------------------------------------------


class FakeNodes:
    """NodeAgents of one test, their heartbeats, and a stand-in agent for their Instances."""

    def __init__(self, api: Api, *, ready_delay: float = 0.0) -> None:
        self.api = api
        self.label = f"kopflet.dev/test-{uuid.uuid4().hex[:8]}"
        self.names: list[str] = []
        self.paused: set[str] = set()
        self.ready_delay = ready_delay
        self.unready: set[str] = set()  # instance names the agent reports not ready
        self._seen: dict[str, float] = {}
        self._next_ip: dict[str, int] = {}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._heartbeats, daemon=True),
            threading.Thread(target=self._agent, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def selector(self) -> dict[str, str]:
        return {self.label: "yes"}

    def add(
        self,
        *,
        cpu: str = "4",
        memory: str = "8Gi",
        instances: int = 110,
        ready: bool = True,
        matching: bool = True,
    ) -> str:
        name = f"fake-{uuid.uuid4().hex[:10]}"
        labels = {self.label: "yes" if matching else "no"}
        self.api.create(
            NODEAGENT_PLURAL,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "NodeAgent",
                "metadata": {"name": name, "labels": labels},
            },
        )
        allocatable = {"cpu": cpu, "memory": memory, "instances": str(instances)}
        self.set_ready(name, ready, capacity=allocatable)
        self.names.append(name)
        self._renew(name)
        return name

    def set_ready(self, name: str, ready: bool, *, capacity: dict[str, str] | None = None) -> None:
        status: dict[str, Any] = {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": "AgentReady" if ready else "AgentNotReady",
                    "message": "test node",
                    "lastTransitionTime": now_rfc3339(),
                }
            ],
            "addresses": [{"type": "InternalIP", "address": "192.0.2.10"}],
        }
        if capacity:
            status["capacity"] = capacity
            status["allocatable"] = capacity
        self.api.patch(NODEAGENT_PLURAL, name, {"status": status}, status=True)

    def _renew(self, name: str) -> None:
        moment = datetime.now(UTC)
        body = kubernetes.client.V1Lease(
            metadata=kubernetes.client.V1ObjectMeta(name=name, namespace=NODE_LEASE_NAMESPACE),
            spec=kubernetes.client.V1LeaseSpec(
                holder_identity=name, lease_duration_seconds=40, renew_time=moment
            ),
        )
        try:
            self.api.coordination.patch_namespaced_lease(
                name, NODE_LEASE_NAMESPACE, {"spec": {"renewTime": moment.isoformat()}}
            )
        except kubernetes.client.ApiException as error:
            if error.status != 404:
                raise
            self.api.coordination.create_namespaced_lease(NODE_LEASE_NAMESPACE, body)

    def _heartbeats(self) -> None:
        while not self._stop.wait(2.0):
            for name in list(self.names):
                if name not in self.paused:
                    with contextlib.suppress(Exception):
                        self._renew(name)

    def _ip_for(self, node: str) -> str | None:
        agent = self.api.get(NODEAGENT_PLURAL, node)
        cidr = ((agent or {}).get("spec") or {}).get("instanceCIDR")
        if not cidr:
            return None
        base = cidr.split("/")[0].rsplit(".", 1)[0]
        self._next_ip[node] = self._next_ip.get(node, 1) + 1
        return f"{base}.{self._next_ip[node]}"

    def _agent(self) -> None:
        while not self._stop.wait(0.2):
            if not self.names:
                continue
            live = [n for n in self.names if n not in self.paused]
            if not live:
                continue
            try:
                self._agent_pass(live)
            except Exception as error:  # keep the stand-in alive through API hiccups
                print(f"fake agent: {error!r}", file=sys.stderr)

    def _agent_pass(self, live: list[str]) -> None:
        selector = f"{NODE_NAME_LABEL} in ({','.join(live)})"
        for item in self.api.list(INSTANCE_PLURAL, labels=selector):
            meta = item["metadata"]
            name, namespace = meta["name"], meta["namespace"]
            if meta.get("deletionTimestamp"):
                if AGENT_FINALIZER in (meta.get("finalizers") or []):
                    keep = [f for f in meta["finalizers"] if f != AGENT_FINALIZER]
                    self.api.patch(
                        INSTANCE_PLURAL, name, {"metadata": {"finalizers": keep}}, namespace
                    )
                continue
            if AGENT_FINALIZER not in (meta.get("finalizers") or []):
                finalizers = [*(meta.get("finalizers") or []), AGENT_FINALIZER]
                self.api.patch(
                    INSTANCE_PLURAL, name, {"metadata": {"finalizers": finalizers}}, namespace
                )
            first = self._seen.setdefault(meta["uid"], time.monotonic())
            want_ready = name not in self.unready and time.monotonic() - first >= self.ready_delay
            ready = condition(item, "Ready")
            if ready is not None and (ready["status"] == "True") == want_ready:
                continue
            status = item.get("status") or {}
            ip = status.get("instanceIP") or self._ip_for(item["spec"]["nodeName"])
            if ip is None:
                continue
            conditions = [c for c in status.get("conditions") or [] if c["type"] != "Ready"]
            conditions.append(
                {
                    "type": "Ready",
                    "status": "True" if want_ready else "False",
                    "reason": "ContainersReady" if want_ready else "ContainersNotReady",
                    "lastTransitionTime": now_rfc3339(),
                }
            )
            self.api.patch(
                INSTANCE_PLURAL,
                name,
                {
                    "status": {
                        "phase": "Running",
                        "reason": "Running",
                        "instanceIP": ip,
                        "hostIP": "192.0.2.10",
                        "conditions": conditions,
                    }
                },
                namespace,
                status=True,
            )

    def pause(self, name: str) -> None:
        """The node's agent dies: no more Lease renewals, no more status."""
        self.paused.add(name)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for name in self.names:
            self.api.delete(NODEAGENT_PLURAL, name)
            with contextlib.suppress(kubernetes.client.ApiException):
                self.api.coordination.delete_namespaced_lease(name, NODE_LEASE_NAMESPACE)


@pytest.fixture
def fake_nodes(admin: Api, controllers: Controllers) -> Iterator[FakeNodes]:
    nodes = FakeNodes(admin)
    yield nodes
    nodes.close()


# --- objects ---------------------------------------------------------------------------------


def workload(
    name: str,
    *,
    replicas: int,
    node_selector: dict[str, str],
    labels: dict[str, str] | None = None,
    memory: str = "16Mi",
    strategy: dict[str, Any] | None = None,
    env: str = "v1",
    min_ready_seconds: int | None = None,
    progress_deadline_seconds: int | None = None,
) -> dict[str, Any]:
    labels = labels or {"app": name}
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": labels},
        "template": {
            "metadata": {"labels": labels},
            "spec": {
                "nodeSelector": node_selector,
                "containers": [
                    {
                        "name": "main",
                        "image": TEST_IMAGE,
                        "command": ["httpd", "-f", "-p", "8080"],
                        "env": [{"name": "VERSION", "value": env}],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "resources": {"requests": {"cpu": "10m", "memory": memory}},
                    }
                ],
            },
        },
    }
    if strategy is not None:
        spec["strategy"] = strategy
    if min_ready_seconds is not None:
        spec["minReadySeconds"] = min_ready_seconds
    if progress_deadline_seconds is not None:
        spec["progressDeadlineSeconds"] = progress_deadline_seconds
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Workload",
        "metadata": {"name": name},
        "spec": spec,
    }


def proxy_service(
    name: str,
    *,
    selector: dict[str, str] | None = None,
    node_port: int | None = None,
    type_: str = "ClusterIP",
    target_port: int | str = "http",
) -> dict[str, Any]:
    port: dict[str, Any] = {"name": "http", "port": 80, "targetPort": target_port}
    if node_port is not None:
        port["nodePort"] = node_port
    spec: dict[str, Any] = {"type": type_, "ports": [port]}
    if selector is not None:
        spec["selector"] = selector
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ProxyService",
        "metadata": {"name": name},
        "spec": spec,
    }


def instances_of(api: Api, namespace: str, app: str) -> list[dict[str, Any]]:
    return api.list(INSTANCE_PLURAL, namespace, labels=f"app={app}")


def live(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in items if not i["metadata"].get("deletionTimestamp")]


def is_ready(item: dict[str, Any]) -> bool:
    ready = condition(item, "Ready")
    return ready is not None and ready["status"] == "True"


def workload_status(api: Api, namespace: str, name: str) -> dict[str, Any]:
    return dict(((api.get(WORKLOAD_PLURAL, name, namespace) or {}).get("status")) or {})


def wait_available(
    api: Api,
    namespace: str,
    name: str,
    replicas: int,
    *,
    timeout: float = 60,
    diagnose: Callable[[], str] | None = None,
) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        obj = api.get(WORKLOAD_PLURAL, name, namespace)
        status = (obj or {}).get("status") or {}
        generation = (obj or {}).get("metadata", {}).get("generation")
        ok = (
            status.get("observedGeneration") == generation
            and status.get("availableReplicas") == replicas
            and status.get("updatedReplicas") == replicas
            and status.get("replicas") == replicas
        )
        return status if ok else None

    found: dict[str, Any] = wait_for(
        done,
        timeout=timeout,
        message=f"workload {name} has {replicas} available",
        diagnose=diagnose,
    )
    return found


def service_of(api: Api, namespace: str, name: str) -> dict[str, Any]:
    return dict(api.get(PROXYSERVICE_PLURAL, name, namespace) or {})
