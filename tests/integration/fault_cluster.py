"""A local cluster of its own for the fault tests, and what they check after every fault.

Fault tests stop the API server, a node's engine or cut a node's link: on the shared test
cluster that would break whatever else runs there, so they get ``kopflet-faults`` (index 4),
started by the same code as ``kopflet up``, with its supervised controller and agents (each
agent with credentials bound to its node). It is started once for the fault modules of a run
(``KOPFLET_KEEP_TEST_CLUSTER=1`` keeps it running afterwards).

The invariants every fault test ends with (``assert_converged``):

* the Workload has exactly ``replicas`` live Instances, all of the current template, all Ready
  — none lost, none duplicated;
* on every node, each live Instance bound there has exactly one running sandbox and one running
  container per spec container, and nothing of ours runs for an Instance that is gone or bound
  elsewhere — no orphan, no twin.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import docker
import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from conftest import TestCluster, _check_infrastructure
from kopflet.api.constants import GROUP, INSTANCE_PLURAL, VERSION, WORKLOAD_PLURAL
from kopflet.local import cluster as local_cluster
from kopflet.local.binaries import Binaries
from kopflet.local.config import ClusterConfig, NodeConfig
from kopflet.local.supervisor import ComponentState
from support import wait_for

FAULTS_CLUSTER = ClusterConfig(name="kopflet-faults", index=4, nodes=3)
TEST_IMAGE = "kopflet/busybox:local"
ROLE_LABEL = "dev.kopflet.role"
NODE_LABEL = "dev.kopflet.node"
UID_LABEL = "dev.kopflet.instance-uid"
CONTAINER_LABEL = "dev.kopflet.container-name"


class FaultCluster(TestCluster):
    __test__ = False

    # -- the API -------------------------------------------------------------------------------
    def custom(self) -> kubernetes.client.CustomObjectsApi:
        return kubernetes.client.CustomObjectsApi(self.api_client())

    def get(self, plural: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        api = self.custom()
        try:
            if namespace is None:
                return dict(api.get_cluster_custom_object(GROUP, VERSION, plural, name))
            return dict(api.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name))
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        finally:
            api.api_client.close()

    def instances(self, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        api = self.custom()
        try:
            listed = api.list_namespaced_custom_object(
                GROUP, VERSION, namespace, INSTANCE_PLURAL, label_selector=selector or ""
            )
        finally:
            api.api_client.close()
        return list(listed["items"])

    def apply(self, namespace: str, manifest: str) -> None:
        self.kubectl("-n", namespace, "apply", "-f", "-", input=manifest)

    # -- the supervisor --------------------------------------------------------------------------
    def component(self, name: str, node: str | None = None) -> ComponentState:
        current = local_cluster.status(self.config)
        assert current is not None, "the faults cluster's supervisor is gone"
        for component in current.components:
            if component.name == name and component.node == node:
                return component
        raise AssertionError(f"no component {name}@{node}")

    def kill(self, name: str, node: str | None = None) -> int:
        """SIGKILL a component (the supervisor restarts it); the pid killed."""
        pid = self.component(name, node).pid
        assert pid is not None, f"{name}@{node} is not running"
        os.kill(pid, signal.SIGKILL)
        return pid

    def wait_running_again(self, name: str, node: str | None, *, old_pid: int) -> None:
        wait_for(
            lambda: (
                (c := self.component(name, node)).state == "running"
                and c.pid not in (None, old_pid)
            ),
            timeout=60,
            interval=0.5,
            message=f"{name}@{node} restarted by the supervisor",
        )

    # -- the nodes' engines ----------------------------------------------------------------------
    def our_containers(self, node: NodeConfig, *, running_only: bool = True) -> list[Any]:
        client = docker.DockerClient(base_url=node.docker_host, version="auto", timeout=30)
        try:
            # The listing inspects each container: one the agent removes meanwhile is a 404.
            for _ in range(5):
                try:
                    return list(
                        client.containers.list(
                            all=not running_only, filters={"label": f"{NODE_LABEL}={node.name}"}
                        )
                    )
                except docker.errors.NotFound:
                    continue
            raise AssertionError(f"{node.name}: containers keep vanishing while listed")
        finally:
            client.close()

    def running_state(self, node: NodeConfig) -> dict[str, str]:
        """Container id → start time of every running container of ours on ``node``."""
        return {c.id: c.attrs["State"]["StartedAt"] for c in self.our_containers(node)}

    def diagnose_namespace(self, namespace: str) -> str:
        parts = [
            self.kubectl("-n", namespace, "get", "kopflet", "-o", "wide", check=False).stdout,
            self.kubectl("-n", namespace, "get", "events", check=False).stdout[-4000:],
            self.kubectl("get", "na", "-o", "wide", check=False).stdout,
            self.log_tail("controller.log", 30),
            *(self.log_tail(f"{n.name}-agent.log", 25) for n in self.nodes),
        ]
        return "\n".join(parts)


def live(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in items if not i["metadata"].get("deletionTimestamp")]


def is_ready(instance: dict[str, Any]) -> bool:
    for condition in (instance.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


def node_problems(cluster: FaultCluster, namespace: str, selector: str | None = None) -> list[str]:
    """Differences between the Instances of ``namespace`` and what runs on the engines: no
    container of a gone Instance, no twin anywhere; every container of the Instances
    ``selector`` matches (all by default) running."""
    problems: list[str] = []
    instances = cluster.instances(namespace)
    live_by_uid = {i["metadata"]["uid"]: i for i in live(instances)}
    checked = {i["metadata"]["uid"] for i in live(cluster.instances(namespace, selector))}
    all_uids = {i["metadata"]["uid"] for i in instances}
    for node in cluster.nodes:
        running = Counter[tuple[str, str, str]]()
        for container in cluster.our_containers(node):
            labels = container.labels
            uid = labels.get(UID_LABEL, "")
            running[(uid, labels.get(ROLE_LABEL, ""), labels.get(CONTAINER_LABEL, ""))] += 1
        for (uid, role, name), count in running.items():
            instance = live_by_uid.get(uid)
            if instance is None:
                if uid in all_uids or _instance_namespace_is(cluster, node, uid, namespace):
                    problems.append(f"{node.name}: {role} {name} of gone instance {uid} runs")
                continue
            if instance["spec"].get("nodeName") != node.name:
                problems.append(f"{node.name}: {role} {name} of {uid} bound elsewhere runs")
            if count > 1:
                problems.append(f"{node.name}: {count} running {role} {name} of {uid}")
        for uid, instance in live_by_uid.items():
            if instance["spec"].get("nodeName") != node.name or uid not in checked:
                continue
            restart = instance["spec"].get("restartPolicy", "Always")
            if restart != "Always":
                continue
            # One container holds the instance's network itself; more share a sandbox's.
            if len(instance["spec"]["containers"]) > 1 and running[(uid, "sandbox", "")] != 1:
                problems.append(f"{node.name}: no running sandbox of {uid}")
            for container in instance["spec"]["containers"]:
                if running[(uid, "app", container["name"])] != 1:
                    problems.append(f"{node.name}: container {container['name']} of {uid} absent")
    return problems


def _instance_namespace_is(
    cluster: FaultCluster, node: NodeConfig, uid: str, namespace: str
) -> bool:
    for container in cluster.our_containers(node):
        if container.labels.get(UID_LABEL) == uid:
            return bool(container.labels.get("dev.kopflet.instance-namespace") == namespace)
    return False


def workload_converged(
    cluster: FaultCluster, namespace: str, name: str, replicas: int
) -> list[str] | None:
    """``None`` when the Workload and the nodes agree; otherwise what still differs."""
    workload = cluster.get(WORKLOAD_PLURAL, name, namespace) or {}
    status = workload.get("status") or {}
    generation = workload.get("metadata", {}).get("generation")
    problems = []
    if status.get("observedGeneration") != generation:
        problems.append(f"observedGeneration {status.get('observedGeneration')} != {generation}")
    for field in ("replicas", "updatedReplicas", "availableReplicas", "readyReplicas"):
        if status.get(field) != replicas:
            problems.append(f"status.{field} = {status.get(field)}")
    instances = cluster.instances(namespace, f"app={name}")
    current = live(instances)
    if len(instances) != replicas:
        problems.append(f"{len(instances)} instances (live {len(current)}), not {replicas}")
    hashes = {i["metadata"]["labels"].get("kopflet.dev/template-hash") for i in current}
    if len(hashes) != 1:
        problems.append(f"template hashes {hashes}")
    not_ready = [i["metadata"]["name"] for i in current if not is_ready(i)]
    if not_ready:
        problems.append(f"not ready: {not_ready}")
    problems.extend(node_problems(cluster, namespace, f"app={name}"))
    return problems or None


def assert_converged(
    cluster: FaultCluster, namespace: str, name: str, replicas: int, *, timeout: float
) -> None:
    last: list[list[str] | None] = [None]

    def probe() -> bool:
        last[0] = workload_converged(cluster, namespace, name, replicas)
        return last[0] is None

    wait_for(
        probe,
        timeout=timeout,
        interval=1.0,
        message=f"workload {name}: {replicas} replicas, one running copy each, no orphans",
        diagnose=lambda: f"still differing: {last[0]}\n" + cluster.diagnose_namespace(namespace),
    )


def web_workload(
    name: str,
    *,
    replicas: int,
    version: str,
    restart_policy: str = "Always",
    max_surge: int = 1,
    max_unavailable: int = 0,
) -> str:
    """An httpd per instance, Ready once it answers on 8080; ``version`` in its env, so
    changing it is a rollout."""
    return f"""
apiVersion: {GROUP}/{VERSION}
kind: Workload
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {{maxSurge: {max_surge}, maxUnavailable: {max_unavailable}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      restartPolicy: {restart_policy}
      terminationGracePeriodSeconds: 2
      containers:
        - name: web
          image: {TEST_IMAGE}
          command: ["sh", "-c", "echo $VERSION > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"]
          env: [{{name: VERSION, value: "{version}"}}]
          ports: [{{name: http, containerPort: 8080}}]
          readinessProbe:
            tcpSocket: {{port: http}}
            periodSeconds: 1
          resources:
            requests: {{cpu: 10m, memory: 8Mi}}
"""


#: Fault tests of another run on this machine (another checkout, a CI run) use the same cluster
#: and would stop its API server under this one's feet: runs take turns.
LOCK_WAIT_SECONDS = 1800.0


_LOCKS_HELD: set[str] = set()


@contextlib.contextmanager
def _exclusive(config: ClusterConfig) -> Iterator[None]:
    # Each test module that imports the fixture gets an instance of its own: within one run
    # the lock is taken once (flock would make the second instance wait for the first).
    if config.name in _LOCKS_HELD:
        yield
        return
    config.run_root.mkdir(parents=True, exist_ok=True)
    with open(config.run_root / f"{config.name}.lock", "w") as lock:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"{config.name} stayed in use by another test run for "
                        f"{LOCK_WAIT_SECONDS:.0f}s",
                        pytrace=False,
                    )
                time.sleep(2)
        _LOCKS_HELD.add(config.name)
        try:
            yield
        finally:
            _LOCKS_HELD.discard(config.name)
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def faults_cluster() -> Iterator[FaultCluster]:
    binaries = _check_infrastructure()
    with _exclusive(FAULTS_CLUSTER):
        yield from _faults_cluster(binaries)


def _faults_cluster(binaries: Binaries) -> Iterator[FaultCluster]:
    reused = local_cluster.status(FAULTS_CLUSTER) is not None
    try:
        local_cluster.up(FAULTS_CLUSTER)
    except local_cluster.UpFailed as error:
        pytest.fail(f"the faults cluster did not come up: {error}", pytrace=False)
    cluster = FaultCluster(config=FAULTS_CLUSTER, binaries=binaries)
    # Python agents start slowly on a busy machine: wait until every node is Ready.
    wait_for(
        lambda: all_nodes_ready(cluster),
        timeout=240,
        interval=2,
        message="every NodeAgent of the faults cluster Ready with a subnet",
        diagnose=lambda: cluster.kubectl("get", "na", "-o", "wide", check=False).stdout,
    )
    yield cluster
    if not reused and os.environ.get("KOPFLET_KEEP_TEST_CLUSTER") != "1":
        local_cluster.down(FAULTS_CLUSTER)


@pytest.fixture
def faults_namespace(faults_cluster: FaultCluster) -> Iterator[str]:
    # Every test starts from a whole cluster: a node still coming back from the previous
    # test's fault would be evicted under this one.
    wait_for(
        lambda: all_nodes_ready(faults_cluster),
        timeout=180,
        interval=1,
        message="every NodeAgent Ready before the test",
        diagnose=lambda: faults_cluster.kubectl("get", "na", "-o", "wide", check=False).stdout,
    )
    # ...and from a quiet one: the previous test's namespace is deleted without waiting, and
    # its containers going away during this test's fault would look like damage done by it.
    wait_for(
        lambda: earlier_tests_gone(faults_cluster),
        timeout=180,
        interval=1,
        message="the namespaces and containers of earlier tests removed",
        diagnose=lambda: faults_cluster.kubectl("get", "ns", check=False).stdout,
    )
    name = f"f-{os.urandom(4).hex()}"
    faults_cluster.kubectl("create", "namespace", name)
    yield name
    faults_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def earlier_tests_gone(cluster: FaultCluster) -> bool:
    names = cluster.kubectl("get", "namespaces", "-o", "name", check=False).stdout.split()
    if any(n.startswith("namespace/f-") for n in names):
        return False
    return not any(
        c.labels.get("dev.kopflet.instance-namespace", "").startswith("f-")
        for node in cluster.nodes
        for c in cluster.our_containers(node, running_only=False)
    )


def all_nodes_ready(cluster: FaultCluster, nodes: list[str] | None = None) -> bool:
    api = cluster.custom()
    try:
        items = api.list_cluster_custom_object(GROUP, VERSION, "nodeagents")["items"]
    except (ApiException, OSError):
        return False
    finally:
        api.api_client.close()
    wanted = set(nodes or [n.name for n in cluster.nodes])
    ready = {
        i["metadata"]["name"]
        for i in items
        if (i.get("spec") or {}).get("instanceCIDR") and is_ready(i)
    }
    return wanted <= ready


def node_ready_status(cluster: FaultCluster, node: str) -> str | None:
    obj = cluster.get("nodeagents", node) or {}
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return str(condition.get("status"))
    return None


@contextlib.contextmanager
def held(cluster: FaultCluster, name: str, node: str | None = None) -> Iterator[None]:
    """``name`` stopped by the supervisor for the body of the ``with``, then started again."""
    local_cluster.hold(cluster.config, name, node)
    try:
        yield
    finally:
        local_cluster.release(cluster.config, name, node)


@contextlib.contextmanager
def frozen(pids: list[int]) -> Iterator[None]:
    """Processes stopped with SIGSTOP — alive but silent, as behind a partition — then
    continued."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def wait_rollout_started(
    cluster: FaultCluster, namespace: str, name: str, *, at_least: int, timeout: float = 120
) -> None:
    """Until at least ``at_least`` (but not all) Instances have the new template."""

    def probe() -> bool:
        status = (cluster.get(WORKLOAD_PLURAL, name, namespace) or {}).get("status") or {}
        updated = int(status.get("updatedReplicas") or 0)
        return at_least <= updated

    wait_for(
        probe,
        timeout=timeout,
        interval=0.3,
        message=f"rollout of {name} under way",
        diagnose=lambda: cluster.diagnose_namespace(namespace),
    )


def our_rules(cluster: FaultCluster, node: NodeConfig) -> list[str]:
    """The node's netfilter rules of ours (iptables mode), without counters: equal lists mean
    nothing was reprogrammed."""
    out = cluster.in_node(node, "iptables-save", timeout=30, check=True).stdout
    lines = []
    for line in out.splitlines():
        if "KOPFLET" not in line or line.startswith("#"):
            continue
        # ":CHAIN - [packets:bytes]" declarations carry counters.
        lines.append(line.split(" [", 1)[0] if line.startswith(":") else line)
    return sorted(lines)


def proxy_service(name: str, *, selector: str) -> str:
    return f"""
apiVersion: {GROUP}/{VERSION}
kind: ProxyService
metadata:
  name: {name}
spec:
  selector: {{app: {selector}}}
  ports:
    - {{name: http, port: 80, targetPort: http}}
"""


def service_endpoints(cluster: FaultCluster, namespace: str, name: str) -> set[str]:
    """The ready endpoint IPs the controller published for a ProxyService."""
    obj = cluster.get("proxyservices", name, namespace) or {}
    endpoints = (obj.get("status") or {}).get("endpoints") or []
    return {str(e["ip"]) for e in endpoints if e.get("ready")}


def waiting_reason(instance: dict[str, Any], container: str = "main") -> tuple[str, str] | None:
    """(reason, message) of a waiting container, as the agent reports it."""
    for status in (instance.get("status") or {}).get("containerStatuses") or []:
        waiting = (status.get("state") or {}).get("waiting")
        if status.get("name") == container and waiting:
            return str(waiting.get("reason") or ""), str(waiting.get("message") or "")
    return None


def warning_events(cluster: FaultCluster, namespace: str, name: str) -> list[str]:
    out = cluster.kubectl(
        "-n",
        namespace,
        "get",
        "events",
        "--field-selector",
        f"involvedObject.name={name},type=Warning",
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{'\\n'}{end}",
        check=False,
    ).stdout
    return [line for line in out.splitlines() if line.strip()]


def bare_instance(
    name: str,
    *,
    node: str,
    container: dict[str, Any] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    restart_policy: str = "Always",
    extra_spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An Instance bound to ``node`` by its author (no scheduler involved)."""
    main = {"name": "main", "image": TEST_IMAGE, "command": ["sleep", "3600"]}
    spec: dict[str, Any] = {
        "nodeName": node,
        "restartPolicy": restart_policy,
        "terminationGracePeriodSeconds": 1,
        "containers": [{**main, **(container or {})}],
        **(extra_spec or {}),
    }
    if volumes is not None:
        spec["volumes"] = volumes
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Instance",
        "metadata": {"name": name, "labels": {"app": "bare"}},
        "spec": spec,
    }


def create_instance(cluster: FaultCluster, namespace: str, body: dict[str, Any]) -> None:
    api = cluster.custom()
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, INSTANCE_PLURAL, body)
    finally:
        api.api_client.close()
