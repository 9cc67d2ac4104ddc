"""The proxy end to end on the 3-node local cluster: real controller, real agents, real Docker.

An instance on node A reaches a virtual IP load-balanced over endpoints on nodes B and C;
node ports answer on every node's address from the host; ClientIP affinity sticks; an
unready endpoint leaves rotation within 2 s; no endpoints means refused at once; a loop
of connections survives an agent restart; an external flush of our chains is repaired
within the resync period. The agents run in the default (iptables) mode here; all three
modes run the same connectivity tests on namespaces in test_proxy_connectivity.py.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import kubernetes
import pytest

from conftest import TestCluster
from kopflet.agent.runtime.labels import (
    CONTAINER_NAME_LABEL,
    INSTANCE_NAME_LABEL,
    INSTANCE_NAMESPACE_LABEL,
)
from kopflet.api.constants import GROUP, INSTANCE_PLURAL, PROXYSERVICE_PLURAL, VERSION
from kopflet.local import images
from kopflet.local.config import NodeConfig
from kopflet.local.supervisor import read_status
from support import missing_infrastructure, wait_for

pytestmark = pytest.mark.integration

SERVERS = {"srv-b1": 1, "srv-c": 2, "srv-b2": 1}  # name -> index of the node it runs on
APP = "proxy-e2e"


@dataclass
class Setup:
    cluster: TestCluster
    namespace: str
    nodes: list[NodeConfig]
    api: kubernetes.client.CustomObjectsApi

    # -- objects -------------------------------------------------------------------------

    def create(self, plural: str, body: dict[str, Any]) -> None:
        self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, body)

    def get(self, plural: str, name: str) -> dict[str, Any]:
        found = self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, name)
        return cast(dict[str, Any], found)

    def service(self, name: str, **spec: Any) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ProxyService",
            "metadata": {"name": name},
            "spec": {
                "selector": {"app": APP},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                **spec,
            },
        }
        self.create(PROXYSERVICE_PLURAL, body)
        allocated: dict[str, Any] = wait_for(
            lambda: (s := self.get(PROXYSERVICE_PLURAL, name))["spec"].get("clusterIP") and s,
            timeout=30,
            message=f"service {name} gets a cluster IP",
        )
        return allocated

    def ready_endpoints(self, name: str) -> set[str]:
        status = self.get(PROXYSERVICE_PLURAL, name).get("status") or {}
        return {e.get("instance", "") for e in status.get("endpoints") or [] if e.get("ready")}

    # -- traffic ---------------------------------------------------------------------------

    def exec_in_client(self, script: str) -> str:
        client = self.cluster.docker(self.nodes[0])
        try:
            labels = {
                INSTANCE_NAME_LABEL: "client",
                INSTANCE_NAMESPACE_LABEL: self.namespace,
                CONTAINER_NAME_LABEL: "client",
            }
            found = client.containers.list(
                filters={"label": [f"{k}={v}" for k, v in labels.items()]}
            )
            assert found, "the client instance's container runs on node A"
            _, output = found[0].exec_run(["sh", "-c", script])
            return str(output.decode(errors="replace"))
        finally:
            client.close()

    def connect(self, host: str, port: int, *, count: int, pause: float = 0.0) -> list[str]:
        """``count`` new connections from the client instance on node A: who answered."""
        script = (
            f"i=0; while [ $i -lt {count} ]; do i=$((i+1));"
            f" printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port} 2>&1 | tail -n 1;"
            f" echo; {'sleep ' + str(pause) + ';' if pause else ''} done"
        )
        lines = [ln.strip() for ln in self.exec_in_client(script).splitlines() if ln.strip()]
        # Anything else keeps nc's own words, so that a failed assertion shows what happened.
        return [
            ln if ln in SERVERS else "refused" if "refused" in ln else f"failed: {ln}"
            for ln in lines
        ]


def _agent_pid(cluster: TestCluster, node: NodeConfig) -> int | None:
    status = read_status(cluster.config.status_file)
    for component in status.components if status else []:
        if (component.name, component.node, component.state) == ("agent", node.name, "running"):
            return component.pid
    return None


def _instance(
    name: str, node: NodeConfig, container: dict[str, Any], labels: dict[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Instance",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeName": node.name,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {"image": images.busybox_image().reference, "imagePullPolicy": "Never", **container}
            ],
        },
    }


def _server(name: str, node: NodeConfig) -> dict[str, Any]:
    # Answers with its hostname (the instance's name); ready while /tmp/ready exists.
    script = (
        "mkdir -p /srv && hostname > /srv/index.html && touch /tmp/ready"
        " && exec httpd -f -p 8080 -h /srv"
    )
    container = {
        "name": "web",
        "command": ["sh", "-c", script],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {
            "exec": {"command": ["cat", "/tmp/ready"]},
            "periodSeconds": 1,
            "failureThreshold": 1,
        },
    }
    return _instance(name, node, container, {"app": APP})


@pytest.fixture(scope="module")
def setup(cluster: TestCluster) -> Iterator[Setup]:
    nodes = cluster.nodes
    if len(nodes) < 3:
        missing_infrastructure("the proxy acceptance tests need a 3-node cluster")
    for node in nodes[:3]:
        if _agent_pid(cluster, node) is None:
            missing_infrastructure(f"no agent runs on {node.name} of the test cluster")
    namespace = f"proxy-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", namespace)
    ctx = Setup(
        cluster, namespace, nodes[:3], kubernetes.client.CustomObjectsApi(cluster.api_client())
    )
    try:
        for name, index in SERVERS.items():
            ctx.create(INSTANCE_PLURAL, _server(name, nodes[index]))
        client = {"name": "client", "command": ["sleep", "3600"]}
        ctx.create(INSTANCE_PLURAL, _instance("client", nodes[0], client, {"role": "client"}))
        ctx.service("probe")
        wait_for(
            lambda: ctx.ready_endpoints("probe") == set(SERVERS),
            timeout=120,
            message="every server instance is a ready endpoint",
            diagnose=lambda: cluster.diagnose("psvc", "probe", namespace),
        )
        yield ctx
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_vip_from_node_a_spreads_300_connections_over_endpoints_on_b_and_c(setup: Setup) -> None:
    vip = setup.service("spread")["spec"]["clusterIP"]
    wait_for(
        lambda: set(setup.connect(vip, 80, count=10)) <= set(SERVERS),
        timeout=60,
        message="the virtual IP answers",
    )
    counts = collections.Counter(setup.connect(vip, 80, count=300))
    assert set(counts) == set(SERVERS), counts
    for name in SERVERS:
        assert 300 * (1 / 3 - 0.10) <= counts[name] <= 300 * (1 / 3 + 0.10), counts


def test_client_ip_affinity_sticks_to_one_endpoint(setup: Setup) -> None:
    spec = {
        "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
    }
    vip = setup.service("sticky", **spec)["spec"]["clusterIP"]
    seen: list[list[str]] = []

    def one_endpoint() -> list[str] | None:
        seen.append(setup.connect(vip, 80, count=30))
        # Refused until the controller has filled in the endpoints and the agent synced.
        return seen[-1] if len(set(seen[-1])) == 1 and seen[-1][0] in SERVERS else None

    answers = wait_for(
        one_endpoint,
        timeout=20,
        message="one client, one endpoint",
        diagnose=lambda: f"answers: {seen[-3:]}",
    )
    assert answers[0] in SERVERS


def test_node_port_on_every_node_reaches_endpoints_from_the_host(setup: Setup) -> None:
    node_port = setup.service("np", type="NodePort")["spec"]["ports"][0]["nodePort"]

    def ask(address: str) -> str:
        try:
            with socket.create_connection((address, node_port), timeout=3) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
        except OSError as error:
            return f"failed: {error}"
        return data.decode(errors="replace").strip().splitlines()[-1]

    for node in setup.nodes:
        wait_for(
            lambda n=node: ask(n.address) in SERVERS, timeout=20, message=f"{node.name}:{node_port}"
        )
        answers = collections.Counter(ask(node.address) for _ in range(30))
        assert set(answers) <= set(SERVERS) and len(answers) >= 2, (node.name, answers)


def test_service_without_endpoints_is_refused_at_once(setup: Setup) -> None:
    vip = setup.service("empty", selector={"app": "nothing-matches"})["spec"]["clusterIP"]
    wait_for(lambda: setup.connect(vip, 80, count=1) == ["refused"], timeout=20, message="refused")
    # "refused" is the REJECT answering at once: a dropped SYN would fail after nc's 3 s.
    assert setup.connect(vip, 80, count=5) == ["refused"] * 5


def test_an_unready_endpoint_leaves_rotation_within_2s(setup: Setup) -> None:
    vip = setup.service("unready")["spec"]["clusterIP"]
    wait_for(lambda: "srv-b2" in setup.connect(vip, 80, count=20), timeout=20, message="srv-b2 in")
    client = setup.cluster.docker(setup.nodes[1])
    container = None
    try:
        labels = [f"{INSTANCE_NAME_LABEL}=srv-b2", f"{INSTANCE_NAMESPACE_LABEL}={setup.namespace}"]
        container = client.containers.list(
            filters={"label": [*labels, f"{CONTAINER_NAME_LABEL}=web"]}
        )[0]
        container.exec_run(["rm", "/tmp/ready"])
        wait_for(
            lambda: "srv-b2" not in setup.ready_endpoints("unready"),
            timeout=30,
            message="the controller drops srv-b2 from the endpoints",
            interval=0.05,
        )
        dropped = time.monotonic()
        wait_for(
            lambda: "srv-b2" not in setup.connect(vip, 80, count=15),
            timeout=10,
            message="srv-b2 leaves rotation",
            interval=0.0,
        )
        assert time.monotonic() - dropped <= 2.0 + 0.5  # the last probe's own duration
    finally:
        if container is not None:
            container.exec_run(["touch", "/tmp/ready"])
        client.close()


def test_connections_keep_working_while_the_agent_on_node_a_restarts(setup: Setup) -> None:
    vip = setup.service("restart")["spec"]["clusterIP"]
    wait_for(
        lambda: set(setup.connect(vip, 80, count=5)) <= set(SERVERS),
        timeout=60,
        message="the virtual IP answers",
    )
    results: list[str] = []
    loop = threading.Thread(
        target=lambda: results.extend(setup.connect(vip, 80, count=200, pause=0.05))
    )
    loop.start()
    time.sleep(1)
    node = setup.nodes[0]
    old = _agent_pid(setup.cluster, node)
    assert old is not None
    os.kill(old, signal.SIGKILL)
    wait_for(
        lambda: (p := _agent_pid(setup.cluster, node)) is not None and p != old,
        timeout=60,
        message="the supervisor restarts the agent",
    )
    loop.join(timeout=120)
    assert len(results) == 200 and set(results) <= set(SERVERS), collections.Counter(results)


def test_an_external_flush_of_our_chains_is_repaired_within_the_resync_period(setup: Setup) -> None:
    vip = setup.service("flush")["spec"]["clusterIP"]
    wait_for(
        lambda: set(setup.connect(vip, 80, count=5)) <= set(SERVERS),
        timeout=60,
        message="the virtual IP answers",
    )
    node = setup.nodes[0]
    for table in ("nat", "filter"):
        saved = setup.cluster.in_node(node, "iptables-save", "-t", table, check=True).stdout
        for line in saved.splitlines():
            chain = line[1:].split()[0] if line.startswith(":") else ""
            if chain.startswith(("KOPFLET-", "KFL-")):
                setup.cluster.in_node(node, "iptables", "-t", table, "-F", chain, check=True)
    flushed = time.monotonic()
    assert set(setup.connect(vip, 80, count=3)) - set(SERVERS), "the flush took effect"
    wait_for(
        lambda: set(setup.connect(vip, 80, count=5)) <= set(SERVERS),
        timeout=30,
        message="the agent repairs our chains",
        interval=0.5,
    )
    assert time.monotonic() - flushed < 30
