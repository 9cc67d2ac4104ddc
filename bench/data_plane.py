"""Bench #4: the data plane -- new connections/s and MB/s through a virtual IP and a node port,
against the same client straight to the instance's IP.

On the bench cluster: one server Instance on the second node (busybox ``httpd`` for short
connections, ``nc -l`` into /dev/null for bulk), one NodePort ProxyService over it. The client
(``netns_roles.py client``: asyncio, fixed duration and concurrency) runs

* in the first node's namespace, through the rules its agent programmed (the cluster's proxy
  mode): direct to the instance IP, to the virtual IP, and to the second node's node port;
* for each mode of ``--modes`` (default all three), in a namespace of the bench's own on the
  cluster bridge (a new one, with an address of its own, for every mode), where
  ``netns_roles.py engine`` runs the agent's ``ProxyEngine`` in that mode, fed the same
  ProxyService and NodeAgents from the API: direct and virtual IP. The cluster's own mode is
  measured there too, as the control: same place, same client, other engine.

Paths are interleaved within each repetition, so load on the shared machine hits them alike.
The direct path connects to a second ``httpd`` of the same Instance, on a port of its own: the
server's TIME_WAIT sockets of one path would otherwise meet the SYNs of the other. Linux gives
every connection its own TCP timestamp offset, so a SYN that lands on a TIME_WAIT socket left by
another client connection carries a timestamp that PAWS takes as old: the socket answers with an
ACK, the client resets and sends the SYN again a second later. Direct and virtual-IP connections
from one client reach the same server 4-tuples (DNAT keeps the source port), so sharing a port
cost whichever path ran second ~5-10% of its connections' worth of one-second stalls. Every line
says how many SYNs the client sent again (``TCPSynRetrans`` in its namespace), per round.
Traffic goes only to the cluster's own namespaces and bridge. Target (issue 8): iptables and
nftables >= 0.9 of direct; userspace reported.

    python bench/data_plane.py --seconds 3 --repeat 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_cluster import IMAGE, BenchCluster, as_dict, condition_true, wait_until
from bench_results import Reporter, Summary, Target, result_of
from netns_roles import BULK_PORT, DIRECT_HTTP_PORT, HTTP_PORT

from kopflet.api.constants import (
    GROUP,
    INSTANCE_PLURAL,
    NODEAGENT_PLURAL,
    PROXYSERVICE_PLURAL,
    VERSION,
)

#: What runs inside the namespaces: the load client, and the engine of a mode.
ROLES = Path(__file__).with_name("netns_roles.py")
#: The bench's own namespace on the cluster bridge: a client "node" with an engine of ours.
CLIENT_NETNS_SUFFIX = "bench-client"
CLIENT_HOST_OCTET = 200


# -- the orchestration -------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientTarget:
    """Where a client runs and what it connects to."""

    label: str
    netns: Path
    host: str
    http_port: int
    bulk_port: int


def in_netns(netns: Path, argv: Sequence[str]) -> list[str]:
    """``netns_roles.py`` (the client, or an engine) run inside a network namespace."""
    return ["nsenter", f"--net={netns}", "--", sys.executable, str(ROLES), *argv]


@dataclass(frozen=True)
class Measured:
    rate: float
    #: SYNs the client's kernel sent again during the run (a SYN answered by a TIME_WAIT
    #: socket's ACK, or lost): each one stalls a connection for the initial RTO, 1 s.
    syn_retransmits: int


def syn_retransmits(netns: Path) -> int:
    """``TcpExt: TCPSynRetrans`` of a namespace (``/proc/net/netstat`` is per namespace)."""
    text = subprocess.run(
        ["nsenter", f"--net={netns}", "--", "cat", "/proc/net/netstat"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    lines = [line.split() for line in text.splitlines() if line.startswith("TcpExt:")]
    counters = dict(zip(lines[0][1:], lines[1][1:], strict=True))
    return int(counters["TCPSynRetrans"])


def measure(path: ClientTarget, kind: str, *, seconds: float, concurrency: int) -> Measured:
    port = path.http_port if kind == "conn" else path.bulk_port
    retransmits = syn_retransmits(path.netns)
    done = subprocess.run(
        in_netns(
            path.netns,
            [
                "client",
                path.host,
                str(port),
                kind,
                "--seconds",
                str(seconds),
                "--concurrency",
                str(concurrency),
            ],
        ),
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"client {kind} via {path.label} failed: {done.stderr[-2000:]}")
    return Measured(
        rate=float(json.loads(done.stdout.strip().splitlines()[-1])["rate"]),
        syn_retransmits=syn_retransmits(path.netns) - retransmits,
    )


def server_instance(name: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Instance",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "http",
                    "image": IMAGE,
                    "command": ["httpd", "-f", "-p", str(HTTP_PORT), "-h", "/"],
                    "ports": [{"name": "http", "containerPort": HTTP_PORT}],
                },
                {
                    "name": "http-direct",
                    "image": IMAGE,
                    "command": ["httpd", "-f", "-p", str(DIRECT_HTTP_PORT), "-h", "/"],
                    "ports": [{"name": "http-direct", "containerPort": DIRECT_HTTP_PORT}],
                },
                {
                    "name": "bulk",
                    "image": IMAGE,
                    "command": [
                        "sh",
                        "-c",
                        f"while true; do nc -l -p {BULK_PORT} > /dev/null; done",
                    ],
                    "ports": [{"name": "bulk", "containerPort": BULK_PORT}],
                },
            ],
        },
    }


def proxy_service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ProxyService",
        "metadata": {"name": name},
        "spec": {
            "type": "NodePort",
            "selector": {"app": name},
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http"},
                {"name": "bulk", "port": BULK_PORT, "targetPort": "bulk"},
            ],
        },
    }


@contextlib.contextmanager
def client_namespace(cluster: BenchCluster, *, seat: int) -> Iterator[Path]:
    """A namespace of ours on the cluster bridge, addressed like one more node (the
    ``seat``-th of them)."""
    config = cluster.config
    name = f"kopflet{config.index}-{CLIENT_NETNS_SUFFIX}-{seat}"
    link = f"kf{config.index}bc{seat}"
    address = f"{config.bridge_network.network_address + CLIENT_HOST_OCTET + seat}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        path = Path("/run/netns") / name
        subprocess.run(
            ["ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", name],
            check=True,
        )
        subprocess.run(["ip", "link", "set", link, "master", config.bridge, "up"], check=True)
        for argv in (
            ["ip", "addr", "add", f"{address}/{config.bridge_network.prefixlen}", "dev", "eth0"],
            ["ip", "link", "set", "eth0", "up"],
            ["ip", "link", "set", "lo", "up"],
            # As on the nodes: the kernel routes a packet before netfilter rewrites it, so a
            # virtual IP needs a route, any route.
            ["ip", "route", "add", "default", "via", config.host_address],
        ):
            subprocess.run(["nsenter", f"--net={path}", "--", *argv], check=True)
        yield path
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@contextlib.contextmanager
def engine_in(netns: Path, *, mode: str, namespace: str) -> Iterator[None]:
    proc = subprocess.Popen(
        in_netns(netns, ["engine", mode, namespace]),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not line.startswith("synced"):
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                raise SystemExit(f"the {mode} engine exited with {proc.returncode}")
        if not line.startswith("synced"):
            raise SystemExit(f"the {mode} engine did not sync within 120 s")
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def wait_service(cluster: BenchCluster, namespace: str, name: str) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        obj = as_dict(
            cluster.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PROXYSERVICE_PLURAL, name
            )
        )
        endpoints = (obj.get("status") or {}).get("endpoints") or []
        if obj["spec"].get("clusterIP") and any(e.get("ready") for e in endpoints):
            return obj
        return None

    found: dict[str, Any] = wait_until(ready, timeout=120, what=f"ProxyService {name} endpoints")
    return found


def run(args: argparse.Namespace, reporter: Reporter) -> None:
    cluster = BenchCluster()
    cluster.up()
    client_node, server_node = cluster.config.node(1), cluster.config.node(2)
    name = "dp-server"
    samples: dict[tuple[str, str], list[Measured]] = {}
    with cluster.namespace("bench-dataplane") as namespace:
        cluster.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, INSTANCE_PLURAL, server_instance(name, server_node.name)
        )
        cluster.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PROXYSERVICE_PLURAL, proxy_service(name)
        )
        instance = wait_until(
            lambda: _ready_instance(cluster, namespace, name),
            timeout=120,
            what="the server Instance Ready",
        )
        service = wait_service(cluster, namespace, name)
        instance_ip = instance["status"]["instanceIP"]
        vip = service["spec"]["clusterIP"]
        ports = {p["name"]: p for p in service["spec"]["ports"]}
        # The agents program rules within about a second of the endpoints; give them that.
        time.sleep(3)
        agent_paths = [
            ClientTarget(
                "direct", client_node.netns_path, instance_ip, DIRECT_HTTP_PORT, BULK_PORT
            ),
            ClientTarget("virtual IP", client_node.netns_path, vip, 80, BULK_PORT),
            ClientTarget(
                "node port",
                client_node.netns_path,
                server_node.address,
                ports["http"]["nodePort"],
                ports["bulk"]["nodePort"],
            ),
        ]
        cluster_mode = _proxy_mode(cluster, client_node.name)
        groups: list[tuple[str, list[ClientTarget]]] = [(cluster_mode, agent_paths)]
        groups += [(mode, []) for mode in args.modes]
        for seat, (mode, paths) in enumerate(groups):
            with contextlib.ExitStack() as stack:
                if not paths:
                    # A namespace, and so a client address, of its own for every mode: the
                    # server's TIME_WAIT sockets left by one mode's client would meet the next
                    # one's SYNs (see the top of this file).
                    own = stack.enter_context(client_namespace(cluster, seat=seat))
                    paths = [
                        ClientTarget("direct", own, instance_ip, DIRECT_HTTP_PORT, BULK_PORT),
                        ClientTarget("virtual IP", own, vip, 80, BULK_PORT),
                    ]
                    stack.enter_context(engine_in(own, mode=mode, namespace=namespace))
                samples.clear()  # one group of paths at a time: a mode may come twice
                for round_ in range(args.repeat):
                    for kind in ("conn", "bulk"):
                        # Rotate the order each round: no path always runs first.
                        shift = round_ % len(paths)
                        for path in paths[shift:] + paths[:shift]:
                            measured = measure(
                                path, kind, seconds=args.seconds, concurrency=args.concurrency
                            )
                            samples.setdefault((f"{mode}|{path.label}", kind), []).append(measured)
            where = (
                "the agents' own rules, node to node"
                if paths is agent_paths
                else "the agent's engine in a namespace of the bench's"
            )
            report(reporter, mode=mode, where=where, paths=paths, samples=samples, args=args)


def report(
    reporter: Reporter,
    *,
    mode: str,
    where: str,
    paths: Sequence[ClientTarget],
    samples: dict[tuple[str, str], list[Measured]],
    args: argparse.Namespace,
) -> None:
    for kind, unit, figure in (("conn", "conn/s", "new connections/s"), ("bulk", "MB/s", "MB/s")):
        direct_runs = samples[(f"{mode}|direct", kind)]
        direct = [m.rate for m in direct_runs]
        for path in paths[1:]:
            through_runs = samples[(f"{mode}|{path.label}", kind)]
            through = [m.rate for m in through_runs]
            target = (
                Target(">= 0.9 of direct", 0.9, direction="at_least", on="ratio")
                if mode in ("iptables", "nftables")
                else None
            )
            reporter.report(
                result_of(
                    bench="4",
                    case=f"{figure} through the {path.label}, {mode} ({where})",
                    figure_name=figure,
                    unit=unit,
                    per_run=through,
                    baseline_name="same client straight to the instance IP",
                    baseline_per_run=direct,
                    target=target,
                    extra={
                        # Each round measured every path back to back: the ratio within a
                        # round is the one least disturbed by the machine's other load.
                        "ratio within a round, median": f"{paired_ratio(through, direct):.2f}",
                        "SYNs the client sent again, per round": _per_round(through_runs),
                        "the same, direct": _per_round(direct_runs),
                    },
                    note=(
                        f"{args.concurrency} connections in parallel"
                        if kind == "conn"
                        else "one connection"
                    ),
                )
            )


def _per_round(runs: Sequence[Measured]) -> str:
    return "/".join(str(m.syn_retransmits) for m in runs)


def paired_ratio(through: Sequence[float], direct: Sequence[float]) -> float:
    return Summary.of(t / d for t, d in zip(through, direct, strict=True) if d).median


def _ready_instance(cluster: BenchCluster, namespace: str, name: str) -> dict[str, Any] | None:
    obj = as_dict(
        cluster.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, INSTANCE_PLURAL, name
        )
    )
    if condition_true(obj, "Ready") and (obj.get("status") or {}).get("instanceIP"):
        return obj
    return None


def _proxy_mode(cluster: BenchCluster, node: str) -> str:
    obj = as_dict(cluster.custom.get_cluster_custom_object(GROUP, VERSION, NODEAGENT_PLURAL, node))
    info = (obj.get("status") or {}).get("nodeInfo") or {}
    return str(info.get("proxyMode") or "iptables")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--repeat", type=int, default=5, help="rounds over every path")
    parser.add_argument("--concurrency", type=int, default=8, help="parallel connections")
    parser.add_argument("--modes", nargs="*", default=["iptables", "nftables", "userspace"])
    parser.add_argument("--results", type=Path, help="append JSON records here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    run(args, Reporter(args.results))


if __name__ == "__main__":
    main()
