"""The benchmarks' own local cluster and what the cluster benchmarks do on it.

``kopflet-bench`` (index 3: its own bridge, ports and node namespaces) is never the user's
cluster (index 0) nor the test suite's (index 1), whose numbers and objects we must not disturb.
Started with the same code as ``kopflet up``, so the controller and the agents run as they do
there: with their ServiceAccounts' credentials, one Docker engine per node.

Here: bring the cluster up, talk to its API server and its engines, create Instances in a burst
and watch them become Ready, run the bare-Docker baseline on the same engines, and read the
components' memory. Every wait is bounded in time.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import kubernetes

from kopflet.api.constants import GROUP, INSTANCE_PLURAL, NODEAGENT_PLURAL, VERSION
from kopflet.local import cluster as local_cluster
from kopflet.local import images
from kopflet.local.config import ClusterConfig, NodeConfig
from kopflet.local.supervisor import read_status

BENCH_CLUSTER = ClusterConfig(name="kopflet-bench", index=3, nodes=3)
IMAGE = images.BUSYBOX_IMAGE
#: Label on every container of the bare-Docker baseline, so cleanup finds exactly those.
BARE_LABEL = "kopflet-bench.baseline"
BARE_NETWORK = "kopflet-bench-bare"
#: The instance command: nothing to probe, so Ready means "running and reported".
SLEEP_COMMAND = ("sleep", "3600")


class BenchError(RuntimeError):
    pass


def wait_until(
    probe: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.2
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class BenchCluster:
    config: ClusterConfig = BENCH_CLUSTER
    concurrency: int = 30
    _api: kubernetes.client.ApiClient | None = field(default=None, init=False, repr=False)

    # -- lifecycle --------------------------------------------------------------------------
    def up(self) -> None:
        """Start the bench cluster (or reuse it) and wait until every node's agent is Ready."""
        local_cluster.up(self.config)
        wait_until(
            lambda: len(self.ready_nodes()) == self.config.nodes,
            timeout=240,
            what=f"{self.config.nodes} Ready NodeAgents",
            interval=1.0,
        )

    def down(self) -> None:
        local_cluster.down(self.config)

    # -- API --------------------------------------------------------------------------------
    @property
    def api(self) -> kubernetes.client.ApiClient:
        if self._api is None:
            configuration = kubernetes.client.Configuration()
            kubernetes.config.load_kube_config(
                config_file=str(self.config.kubeconfig), client_configuration=configuration
            )
            # One connection per creating thread, or the burst queues on the pool.
            configuration.connection_pool_maxsize = max(self.concurrency, 4) + 4
            self._api = kubernetes.client.ApiClient(configuration)
        return self._api

    @property
    def custom(self) -> kubernetes.client.CustomObjectsApi:
        return kubernetes.client.CustomObjectsApi(self.api)

    @property
    def core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self.api)

    def ready_nodes(self) -> list[str]:
        try:
            listing = as_dict(
                self.custom.list_cluster_custom_object(GROUP, VERSION, NODEAGENT_PLURAL)
            )
        except kubernetes.client.ApiException:
            return []
        return [
            n["metadata"]["name"]
            for n in listing.get("items", [])
            if condition_true(n, "Ready") and not (n.get("spec") or {}).get("unschedulable")
        ]

    @contextlib.contextmanager
    def namespace(self, prefix: str) -> Iterator[str]:
        """A fresh namespace; deleted on the way out, waiting (bounded) for its Instances."""
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.core.create_namespace(
            kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=name))
        )
        try:
            yield name
        finally:
            self.delete_instances(name, timeout=240)
            self.core.delete_namespace(name)

    def delete_instances(self, namespace: str, *, timeout: float) -> None:
        self.custom.delete_collection_namespaced_custom_object(
            GROUP, VERSION, namespace, INSTANCE_PLURAL
        )
        wait_until(
            lambda: not self.list_instances(namespace),
            timeout=timeout,
            what=f"the Instances of {namespace} to be gone",
            interval=1.0,
        )

    def list_instances(self, namespace: str) -> list[dict[str, Any]]:
        listing = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, INSTANCE_PLURAL
        )
        return list(as_dict(listing)["items"])

    def create_instances(
        self,
        namespace: str,
        names: Sequence[str],
        *,
        node_name: str | None = None,
        until_ready: InstanceWatch | None = None,
    ) -> dict[str, float]:
        """Create Instances with ``concurrency`` threads; each one's send time (monotonic).

        With ``until_ready``, each thread waits for its Instance to be seen Ready there before
        it creates the next (a closed loop: ``concurrency`` in flight, as a client of blocking
        ``docker run``s keeps); without, the creates go out as fast as the API takes them."""
        sent: dict[str, float] = {}

        def create(name: str) -> None:
            body = instance_object(name, node_name=node_name)
            sent[name] = time.monotonic()
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, INSTANCE_PLURAL, body
            )
            if until_ready is not None:
                until_ready.wait_one_ready(name, timeout=120)

        with ThreadPoolExecutor(self.concurrency) as pool:
            for future in [pool.submit(create, n) for n in names]:
                future.result(timeout=120)
        return sent

    def create_instances_paced(
        self, namespace: str, names: Sequence[str], *, rate: float
    ) -> dict[str, float]:
        """Create Instances one after another, ``rate`` a second; each one's send time."""
        sent: dict[str, float] = {}
        for i in paced(len(names), rate=rate):
            name = names[i]
            sent[name] = time.monotonic()
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, INSTANCE_PLURAL, instance_object(name)
            )
        return sent

    # -- engines ----------------------------------------------------------------------------
    @property
    def nodes(self) -> list[NodeConfig]:
        return self.config.node_configs()

    def docker(self, node: NodeConfig) -> docker.DockerClient:
        return docker.DockerClient(
            base_url=node.docker_host,
            version="auto",
            timeout=180,
            max_pool_size=max(self.concurrency, 4) + 4,
        )

    def containers_running(self) -> int:
        return sum(len(self.docker(n).containers.list()) for n in self.nodes)

    # -- processes --------------------------------------------------------------------------
    def component_pids(self, name: str) -> dict[str | None, int]:
        """``{node (None on the host): pid}`` of a supervised component, e.g. ``agent``."""
        status = read_status(self.config.status_file)
        if status is None:
            raise BenchError(f"{self.config.name} is not running")
        return {
            c.node: c.pid
            for c in status.components
            if c.name == name and c.pid is not None and c.state == "running"
        }


def as_dict(value: object) -> dict[str, Any]:
    """The custom-objects client returns plain JSON objects, typed as ``object``."""
    if not isinstance(value, dict):
        raise BenchError(f"unexpected API answer: {type(value).__name__}")
    return value


def condition_true(obj: dict[str, Any], kind: str) -> bool:
    return any(
        c.get("type") == kind and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or ()
    )


def instance_object(name: str, *, node_name: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": IMAGE, "command": list(SLEEP_COMMAND)}],
        # sleep as PID 1 ignores SIGTERM: without this every delete waits out 30 s.
        "terminationGracePeriodSeconds": 1,
    }
    if node_name is not None:
        spec["nodeName"] = node_name
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Instance",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": spec,
    }


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (VmRSS), as ``ps`` reports it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time one process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # utime and stime are fields 14 and 15 of the line, 12 and 13 after the command name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def paced(count: int, *, rate: float) -> Iterator[int]:
    """``0 .. count - 1``, each yielded at its turn, ``rate`` a second from the first."""
    start = time.monotonic()
    for i in range(count):
        time.sleep(max(0.0, start + i / rate - time.monotonic()))
        yield i


def machine_cpu_seconds() -> float:
    """Non-idle CPU time of every core together so far (/proc/stat: all but idle and iowait)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    # user nice system idle iowait irq softirq steal (guest time is already in user).
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class InstanceWatch:
    """Watches one namespace's Instances from a thread: when each was first seen Ready, on
    which node, and when it was deleted. Times are ``time.monotonic()`` at event receipt."""

    cluster: BenchCluster
    namespace: str
    first_seen: dict[str, float] = field(default_factory=dict)
    bound_at: dict[str, float] = field(default_factory=dict)
    ready_at: dict[str, float] = field(default_factory=dict)
    node_of: dict[str, str] = field(default_factory=dict)
    deleted_at: dict[str, float] = field(default_factory=dict)
    events: int = 0
    #: Changes seen after the initial list: a write that changed nothing makes no event.
    modified: int = 0
    deleted: int = 0
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    #: Notified whenever an Instance is first seen Ready (or the watch fails).
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _thread: threading.Thread | None = None

    def __enter__(self) -> InstanceWatch:
        listing = as_dict(
            self.cluster.custom.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, INSTANCE_PLURAL
            )
        )
        for item in listing["items"]:
            self._record("ADDED", item)
        version = listing["metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._run, args=(version,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def _run(self, version: str) -> None:
        try:
            # Short server-side timeouts so a stop request is noticed within seconds.
            while not self._stop.is_set():
                watch = kubernetes.watch.Watch()
                for event in watch.stream(
                    self.cluster.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    INSTANCE_PLURAL,
                    resource_version=version,
                    timeout_seconds=5,
                    allow_watch_bookmarks=True,
                ):
                    obj = event["object"]
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self._record(event["type"], obj)
                    if self._stop.is_set():
                        watch.stop()
                        break
        except BaseException as error:  # surfaced by the bench that waits on us
            self.error = error
            with self._changed:
                self._changed.notify_all()

    def _record(self, kind: str, obj: dict[str, Any]) -> None:
        now = time.monotonic()
        self.events += 1
        name = obj["metadata"]["name"]
        self.first_seen.setdefault(name, now)
        node = (obj.get("spec") or {}).get("nodeName")
        if node:
            self.node_of[name] = node
            self.bound_at.setdefault(name, now)
        if kind == "MODIFIED":
            self.modified += 1
        if kind == "DELETED":
            self.deleted += 1
            self.deleted_at.setdefault(name, now)
        elif condition_true(obj, "Ready") and name not in self.ready_at:
            with self._changed:
                self.ready_at[name] = now
                self._changed.notify_all()

    def wait_one_ready(self, name: str, *, timeout: float) -> None:
        """Block until ``name`` is seen Ready: woken by the watch, not polled, so a client
        that waits for its Instance sends its next create as soon as a ``docker run`` would
        return."""
        with self._changed:
            if not self._changed.wait_for(
                lambda: name in self.ready_at or self.error is not None, timeout=timeout
            ):
                raise BenchError(f"Instance {name} not Ready after {timeout:.0f}s")
        if self.error is not None:
            raise BenchError(f"the Instance watch failed: {self.error!r}")

    def wait_ready(self, names: Sequence[str], *, timeout: float) -> None:
        def all_ready() -> bool:
            if self.error is not None:
                raise BenchError(f"the Instance watch failed: {self.error!r}")
            return all(n in self.ready_at for n in names)

        try:
            wait_until(all_ready, timeout=timeout, what=f"{len(names)} Instances Ready")
        except BenchError:
            missing = [n for n in names if n not in self.ready_at]
            raise BenchError(
                f"{len(missing)} of {len(names)} Instances not Ready after {timeout:.0f}s"
                f" (first: {missing[:3]})"
            ) from None


# -- the bare-Docker baseline ----------------------------------------------------------------


def ensure_bare_network(client: docker.DockerClient, node: NodeConfig) -> None:
    """A bridge network of our own on the engine, so a bare container gets a veth and an
    address just as an instance's sandbox does (the engines have no default bridge)."""
    if client.networks.list(names=[BARE_NETWORK]):
        return
    pool = docker.types.IPAMPool(subnet=f"10.250.{node.index}.0/24")
    client.networks.create(
        BARE_NETWORK, driver="bridge", ipam=docker.types.IPAMConfig(pool_configs=[pool])
    )


@dataclass(frozen=True)
class BareBurst:
    #: Per container: from its request to running (the client's 30 workers queue the rest).
    latency: dict[int, float]
    #: Per container: from the start of the burst to running, as if all were asked at once.
    since_burst: dict[int, float]
    wall: float


def bare_docker_run(
    cluster: BenchCluster, count: int, *, nodes: Sequence[NodeConfig] | None = None
) -> BareBurst:
    """``docker run -d`` (create + start through the Engine API, as the agent calls it) of
    ``count`` containers, spread round-robin over the engines, ``concurrency`` at a time.

    The containers stay until :func:`remove_bare`."""
    clients = _bare_clients(cluster, nodes)
    latency: dict[int, float] = {}

    def run(i: int) -> None:
        started = time.monotonic()
        _bare_run(clients[i % len(clients)], f"bench-bare-{i}")
        done_at[i] = time.monotonic()
        latency[i] = done_at[i] - started

    done_at: dict[int, float] = {}
    burst_started = time.monotonic()
    with ThreadPoolExecutor(cluster.concurrency) as pool:
        for future in [pool.submit(run, i) for i in range(count)]:
            future.result(timeout=300)
    since_burst = {i: t - burst_started for i, t in done_at.items()}
    return BareBurst(
        latency=latency, since_burst=since_burst, wall=time.monotonic() - burst_started
    )


def bare_docker_run_paced(
    cluster: BenchCluster, count: int, *, rate: float, prefix: str
) -> dict[int, float]:
    """``docker run -d`` of ``count`` containers started ``rate`` a second, round-robin over
    the engines; per container, from its request to running. They stay until
    :func:`remove_bare`."""
    clients = _bare_clients(cluster, None)
    latency: dict[int, float] = {}

    def run(i: int) -> None:
        started = time.monotonic()
        _bare_run(clients[i % len(clients)], f"bench-bare-{prefix}-{i}")
        latency[i] = time.monotonic() - started

    # Threads, so that a slow run does not hold back the next one's start.
    with ThreadPoolExecutor(cluster.concurrency) as pool:
        futures = [pool.submit(run, i) for i in paced(count, rate=rate)]
        for future in futures:
            future.result(timeout=300)
    return latency


def _bare_clients(
    cluster: BenchCluster, nodes: Sequence[NodeConfig] | None
) -> list[docker.DockerClient]:
    """A client per engine, in node order, each with the bare network in place."""
    clients = []
    for node in nodes or cluster.nodes:
        client = cluster.docker(node)
        ensure_bare_network(client, node)
        clients.append(client)
    return clients


def _bare_run(client: docker.DockerClient, name: str) -> None:
    client.containers.run(
        IMAGE,
        list(SLEEP_COMMAND),
        detach=True,
        network=BARE_NETWORK,
        labels={BARE_LABEL: "1"},
        name=name,
    )


def remove_bare(cluster: BenchCluster) -> None:
    def remove(container: Any) -> None:
        container.remove(force=True)

    for node in cluster.nodes:
        client = cluster.docker(node)
        found = client.containers.list(all=True, filters={"label": BARE_LABEL})
        with ThreadPoolExecutor(min(8, cluster.concurrency)) as pool:
            for future in [pool.submit(remove, c) for c in found]:
                future.result(timeout=120)
