"""Instances reach each other across nodes, and services reach instances on every node."""

from __future__ import annotations

import random
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from agent_nodes import (
    Admin,
    Agents,
    admin_api,
    agents,
    all_ours,
    http_get,
    instance_body,
    running_ready,
    web,
)

from conftest import TestCluster
from kopflet.agent.runtime.labels import CONTAINER_NAME_LABEL, INSTANCE_UID_LABEL
from kopflet.local.config import NodeConfig
from support import wait_for

pytestmark = pytest.mark.integration
__all__ = ["admin_api", "agents"]


def start_webs(
    cluster: TestCluster, admin_api: Admin, namespace: str, nodes: list[NodeConfig]
) -> dict[str, dict[str, Any]]:
    """One web instance per node, serving its node's name; Running and Ready."""
    for node in nodes:
        body = instance_body(f"web-{node.name}", node=node.name, containers=[web(node.name)])
        admin_api.create_instance(namespace, body)
    found: dict[str, dict[str, Any]] = {}
    for node in nodes:
        name = f"web-{node.name}"
        found[node.name] = wait_for(
            lambda name=name: (o := admin_api.instance(namespace, name)) and running_ready(o) and o,
            timeout=90,
            message=f"{name} Running and Ready",
            diagnose=lambda name=name: cluster.diagnose("instance", name, namespace),
        )
    return found


def served_by(answer: str) -> str | None:
    match = re.search(r"\b(node-\d+)\b", answer)
    return match.group(1) if match else None


def test_an_instance_on_node_1_is_reachable_from_node_3s_namespace(
    cluster: TestCluster, agents: Agents, admin_api: Admin, namespace: str
) -> None:
    first, third = cluster.nodes[0], cluster.nodes[2]
    webs = start_webs(cluster, admin_api, namespace, [first])
    address = webs[first.name]["status"]["instanceIP"]
    answer = wait_for(
        lambda: http_get(cluster, third, address),
        timeout=30,
        message=f"{address} on {first.name} answers {third.name} (routes from NodeAgents)",
        diagnose=lambda: cluster.in_node(third, "ip", "route").stdout,
    )
    assert "200 OK" in answer and first.name in answer
    route = cluster.in_node(third, "ip", "route", "show", "proto", "147").stdout
    subnet = admin_api.node_agent(first.name)["spec"]["instanceCIDR"]
    assert f"{subnet} via {first.address}" in route, route


def service(name: str, *, ip: str, node_port: int | None = None) -> dict[str, Any]:
    port: dict[str, Any] = {"port": 80, "targetPort": 8080, "protocol": "TCP"}
    spec: dict[str, Any] = {"clusterIP": ip, "ports": [port], "type": "ClusterIP"}
    if node_port is not None:
        spec["type"] = "NodePort"
        port["nodePort"] = node_port
    # No selector: the endpoints are the test's to write, controller or not.
    return {
        "apiVersion": "kopflet.dev/v1alpha1",
        "kind": "ProxyService",
        "metadata": {"name": name},
        "spec": spec,
    }


def endpoints(webs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "ip": obj["status"]["instanceIP"],
            "ready": True,
            "nodeName": node,
            "instance": obj["metadata"]["name"],
            "ports": [{"port": 8080, "protocol": "TCP"}],
        }
        for node, obj in sorted(webs.items())
    ]


def exec_in(cluster: TestCluster, node: NodeConfig, uid: str, container: str, script: str) -> str:
    client = cluster.docker(node)
    try:
        [target] = [
            c
            for c in all_ours(cluster, node)
            if c["Labels"].get(INSTANCE_UID_LABEL) == uid
            and c["Labels"].get(CONTAINER_NAME_LABEL) == container
            and c["State"] == "running"
        ]
        result = client.containers.get(target["Id"]).exec_run(["sh", "-c", script])
        return str(result.output.decode(errors="replace"))
    finally:
        client.close()


def test_a_virtual_ip_reaches_instances_on_every_node_from_a_node_and_from_an_instance(
    cluster: TestCluster, agents: Agents, admin_api: Admin, namespace: str
) -> None:
    webs = start_webs(cluster, admin_api, namespace, cluster.nodes)
    vip = f"10.96.{random.randint(200, 250)}.{random.randint(2, 250)}"
    node_port = random.randint(31000, 32700)
    admin_api.create_service(namespace, service("spread", ip=vip, node_port=node_port))
    admin_api.patch_service_status(namespace, "spread", {"endpoints": endpoints(webs)})
    first, second, third = cluster.nodes

    # From node-1 itself: every node's endpoint answers through the virtual IP.
    seen: Counter[str | None] = Counter()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(seen.keys() - {None}) < 3:
        seen[served_by(http_get(cluster, first, vip, 80))] += 1
    assert {n.name for n in cluster.nodes} <= set(seen), seen

    # From an instance on node-1 (its web container, through the instance's own namespace).
    client_uid = webs[first.name]["metadata"]["uid"]
    script = f"for i in $(seq 30); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {vip} 80; done"
    answers = exec_in(cluster, first, client_uid, "web", script)
    from_instance = set(re.findall(r"\bnode-\d+\b", answers))
    assert from_instance - {first.name}, f"no endpoint on another node answered: {answers[:500]}"

    # The node port on node-2's address, from node-3's namespace, reaches them too.
    seen_by_port = {
        served_by(http_get(cluster, third, second.address, node_port)) for _ in range(15)
    }
    assert len(seen_by_port - {None}) >= 2, seen_by_port
    # And from the host, outside every node, on node-3's address.
    from_host = {served_by(host_get(third.address, node_port)) for _ in range(15)}
    assert len(from_host - {None}) >= 2, from_host


def host_get(address: str, port: int) -> str:
    try:
        with socket.create_connection((address, port), timeout=3) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
    except OSError:
        return ""
    return data.decode(errors="replace")


PROBE_LOOP = """
import re, socket, sys, time
address, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + seconds
while time.monotonic() < end:
    served = "-"
    try:
        with socket.create_connection((address, port), timeout=1) as s:
            s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        found = re.search(rb"node-[0-9]+", data)
        served = found.group(0).decode() if found else "-"
    except OSError:
        pass
    print(f"{time.time():.3f} {served}", flush=True)
    time.sleep(0.02)
"""


def probe_loop(
    cluster: TestCluster, node: NodeConfig, address: str, port: int, seconds: float
) -> subprocess.Popen[str]:
    """Connections from ``node`` for ``seconds``, one line each: wall time and who served."""
    return subprocess.Popen(
        [
            "nsenter",
            f"--net={node.netns_path}",
            "--",
            sys.executable,
            "-c",
            PROBE_LOOP,
            address,
            str(port),
            str(seconds),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_an_endpoint_marked_unready_in_the_api_leaves_rotation_within_2s(
    cluster: TestCluster, agents: Agents, admin_api: Admin, namespace: str
) -> None:
    first, second, third = cluster.nodes
    webs = start_webs(cluster, admin_api, namespace, [second, third])
    vip = f"10.96.{random.randint(200, 250)}.{random.randint(2, 250)}"
    admin_api.create_service(namespace, service("rotation", ip=vip))
    listed = endpoints(webs)
    admin_api.patch_service_status(namespace, "rotation", {"endpoints": listed})
    wait_for(
        lambda: len({served_by(http_get(cluster, first, vip, 80)) for _ in range(8)} - {None}) == 2,
        timeout=60,
        message="both endpoints in rotation",
    )
    loop = probe_loop(cluster, first, vip, 80, seconds=8)
    time.sleep(2)
    for endpoint in listed:
        endpoint["ready"] = endpoint["nodeName"] != third.name
    marked_at = time.time()
    admin_api.patch_service_status(namespace, "rotation", {"endpoints": listed})
    out, err = loop.communicate(timeout=60)
    answers = [(float(t), who) for t, who in (line.split() for line in out.splitlines())]
    after = [(t, who) for t, who in answers if t > marked_at]
    assert after and all(who != "-" for _, who in answers), (err, answers[-5:])
    last_by_third = max((t for t, who in after if who == third.name), default=marked_at)
    assert last_by_third - marked_at < 2.0, f"still served {last_by_third - marked_at:.2f}s later"
    assert [who for t, who in after if t > marked_at + 2.0].count(second.name) >= 5


CONNECTION_LOOP = """
import socket, sys, time
vip, stop, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
ok = failed = 0
end = time.monotonic() + limit
while time.monotonic() < end:
    try:
        with socket.create_connection((vip, 80), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        ok += b"200 OK" in data
        failed += b"200 OK" not in data
    except OSError:
        failed += 1
    try:
        open(stop).close()
        break
    except OSError:
        time.sleep(0.05)
print(ok, failed)
"""


def test_connections_to_a_virtual_ip_keep_working_while_the_agent_is_killed_and_restarted(
    cluster: TestCluster, agents: Agents, admin_api: Admin, namespace: str, tmp_path: Path
) -> None:
    first, second = cluster.nodes[0], cluster.nodes[1]
    webs = start_webs(cluster, admin_api, namespace, [second])
    vip = f"10.96.{random.randint(200, 250)}.{random.randint(2, 250)}"
    admin_api.create_service(namespace, service("steady", ip=vip))
    admin_api.patch_service_status(namespace, "steady", {"endpoints": endpoints(webs)})
    wait_for(
        lambda: http_get(cluster, first, vip, 80),
        timeout=30,
        message=f"{vip} answers on {first.name}",
    )
    stop = tmp_path / "stop"
    loop = subprocess.Popen(
        [
            "nsenter",
            f"--net={first.netns_path}",
            "--",
            sys.executable,
            "-c",
            CONNECTION_LOOP,
            vip,
            str(stop),
            "150",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2)
        old = agents.kill(first)
        time.sleep(3)  # the node goes on without its agent: rules stay as they are
        agents.restart(first, old_pid=old)
        agents.wait_synced(first)
        time.sleep(3)  # connections through the rules the restarted agent took over
    finally:
        stop.touch()
        out, err = loop.communicate(timeout=60)
        agents.ensure_running(first)
    ok, failed = map(int, out.split())
    assert failed == 0 and ok > 20, (ok, failed, err)
