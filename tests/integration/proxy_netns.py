"""A two-node network made of namespaces, for the proxy's integration tests.

    outside (r) ── bridge up0 172.30.0.1/24 ──┬── n1 eth0 172.30.0.11 ── kbr0 10.244.1.1/24
                                              │                          ├── e1 10.244.1.2
                                              │                          └── c1 10.244.1.100
                                              └── n2 eth0 172.30.0.12 ── kbr0 10.244.2.1/24
                                                                         ├── e2 10.244.2.2
                                                                         └── e3 10.244.2.3

Like the local cluster: every node is a namespace with its own instance subnet on a
bridge, and nodes reach each other's subnets only through the routes the proxy engine
installs. Each endpoint runs a server answering TCP and UDP on port 8080 with its name.
The engine itself runs as a "driver" process inside a node's namespace, fed ProxyService
and NodeAgent objects as JSON lines, exactly like the agent would feed it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support import missing_infrastructure

SOURCE_ROOT = Path(__file__).resolve().parents[2] / "operator"

SERVER = r"""
import socket, sys, threading
name = sys.argv[1]
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", 8080))
    while True:
        data, addr = u.recvfrom(2048)
        u.sendto(f"{name} {addr[0]}\n".encode(), addr)
threading.Thread(target=udp, daemon=True).start()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen(256)
print("ready", flush=True)
while True:
    c, addr = s.accept()
    try:
        c.sendall(f"{name} {addr[0]}\n".encode())
    except OSError:
        pass
    c.close()
"""

# Prints one JSON list: per attempt the answering endpoint's name, or refused/timeout/error.
CLIENT = r"""
import json, socket, sys, time
host, port, count, proto, src_port, delay = sys.argv[1:7]
port, count, src_port, delay = int(port), int(count), int(src_port), float(delay)
out = []
for _ in range(count):
    try:
        if proto == "tcp":
            with socket.create_connection((host, port), timeout=3) as s:
                s.settimeout(3)
                data = s.recv(256)
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if src_port:
                    s.bind(("0.0.0.0", src_port))
                s.settimeout(2)
                s.connect((host, port))
                s.send(b"hi")
                data = s.recv(256)
        out.append(data.decode().split()[0] if data else "empty")
    except ConnectionRefusedError:
        out.append("refused")
    except (socket.timeout, TimeoutError):
        out.append("timeout")
    except OSError as exc:
        out.append(f"error:{exc.errno}")
    if delay:
        time.sleep(delay)
print(json.dumps(out), flush=True)
"""

DRIVER = r"""
import asyncio, json, sys
from prometheus_client import CollectorRegistry
from kopflet.agent.proxy import ProxyEngine, ProxyMetrics, SyncPolicy

mode, node = sys.argv[1], sys.argv[2]
min_interval, full_period, canary = (float(a) for a in sys.argv[3:6])

async def main():
    engine = ProxyEngine(
        node_name=node,
        mode=mode,
        policy=SyncPolicy(min_interval=min_interval, full_period=full_period,
                          canary_interval=canary),
        metrics=ProxyMetrics(CollectorRegistry()),
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    sync_task = asyncio.create_task(engine.run())

    async def report():
        last = None
        while True:
            await asyncio.sleep(0.02)
            if engine.last_successful_sync != last:
                last = engine.last_successful_sync
                print("synced", flush=True)

    report_task = asyncio.create_task(report())
    while line := await reader.readline():
        msg = json.loads(line)
        if "service" in msg:
            engine.on_service(None, msg["service"])
        elif "delete_service" in msg:
            engine.on_service(msg["delete_service"], None)
        elif "node" in msg:
            engine.on_node(None, msg["node"])
        elif "initial" in msg:
            engine.mark_initial_lists_complete()
    sync_task.cancel()
    report_task.cancel()
    await asyncio.gather(sync_task, report_task, return_exceptions=True)

asyncio.run(main())
"""

NODE_ADDRESSES = {"n1": "172.30.0.11", "n2": "172.30.0.12"}
NODE_SUBNETS = {"n1": "10.244.1.0/24", "n2": "10.244.2.0/24"}
ENDPOINTS = {"e1": ("n1", "10.244.1.2"), "e2": ("n2", "10.244.2.2"), "e3": ("n2", "10.244.2.3")}
CLIENT_ADDRESS = "10.244.1.100"


def run(*args: str, check: bool = True, stdin: str | None = None) -> str:
    done = subprocess.run(
        list(args), input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done.stdout


def require_root_and_tools() -> None:
    if os.geteuid() != 0:
        missing_infrastructure("the proxy's netns tests need root")
    for tool in ("ip", "nsenter", "iptables-nft-restore", "nft", "conntrack"):
        if shutil.which(tool) is None:
            missing_infrastructure(f"{tool} is not installed")


@dataclass
class Driver:
    """The proxy engine running in one node's namespace, fed JSON lines."""

    node: str
    process: subprocess.Popen[str]
    log: Path
    synced: list[float] = field(default_factory=list)

    def start_reader(self) -> None:
        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                if line.strip() == "synced":
                    self.synced.append(time.monotonic())

        threading.Thread(target=read, daemon=True).start()

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def wait_synced(self, count: int, *, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.synced) < count:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(
                    f"driver on {self.node}: {len(self.synced)} syncs, wanted {count};"
                    f" log:\n{self.log.read_text()[-4000:]}"
                )
            time.sleep(0.02)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Topology:
    tag: str
    workdir: Path
    servers: list[subprocess.Popen[str]] = field(default_factory=list)
    drivers: list[Driver] = field(default_factory=list)

    def ns(self, short: str) -> str:
        return f"kopflet-ptest-{self.tag}-{short}"

    def in_ns(self, short: str, *args: str, check: bool = True, stdin: str | None = None) -> str:
        return run("nsenter", f"--net=/run/netns/{self.ns(short)}", *args, check=check, stdin=stdin)

    # --- building ------------------------------------------------------------------

    def build(self) -> None:
        for short in ("r", "n1", "n2", "e1", "e2", "e3", "c1"):
            run("ip", "netns", "add", self.ns(short))
            self.in_ns(short, "ip", "link", "set", "lo", "up")
        self.in_ns("r", "ip", "link", "add", "up0", "type", "bridge")
        self.in_ns("r", "ip", "addr", "add", "172.30.0.1/24", "dev", "up0")
        self.in_ns("r", "ip", "link", "set", "up0", "up")
        for node, address in NODE_ADDRESSES.items():
            self._veth("r", f"u-{node}", node, "eth0", bridge="up0")
            self.in_ns(node, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
            self.in_ns(node, "ip", "route", "add", "default", "via", "172.30.0.1")
            self.in_ns(node, "ip", "link", "add", "kbr0", "type", "bridge")
            gateway = NODE_SUBNETS[node].replace(".0/24", ".1")
            self.in_ns(node, "ip", "addr", "add", f"{gateway}/24", "dev", "kbr0")
            self.in_ns(node, "ip", "link", "set", "kbr0", "up")
            # What Docker does on a node: route, and let bridged traffic through netfilter
            # so replies between two instances of one bridge are un-DNATed.
            self.in_ns(node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            self.in_ns(node, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
        for short, (node, address) in {**ENDPOINTS, "c1": ("n1", CLIENT_ADDRESS)}.items():
            self._veth(node, f"v-{short}", short, "eth0", bridge="kbr0")
            # An endpoint reaching itself through a virtual IP gets its packet back on
            # the port it came from: the bridge must allow that (kubelet's hairpin-veth,
            # Docker's --userland-proxy=false).
            self.in_ns(node, "ip", "link", "set", f"v-{short}", "type", "bridge_slave",
                       "hairpin", "on")  # fmt: skip
            gateway = NODE_SUBNETS[node].replace(".0/24", ".1")
            self.in_ns(short, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
            self.in_ns(short, "ip", "route", "add", "default", "via", gateway)
        for short in ENDPOINTS:
            self._start_server(short)

    def _veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str, *, bridge: str) -> None:
        tmp_b = f"kp{self.tag}{ns_b}"[:15]
        self.in_ns(ns_a, "ip", "link", "add", name_a, "type", "veth", "peer", "name", tmp_b)
        self.in_ns(ns_a, "ip", "link", "set", tmp_b, "netns", f"/run/netns/{self.ns(ns_b)}")
        self.in_ns(ns_b, "ip", "link", "set", tmp_b, "name", name_b)
        self.in_ns(ns_a, "ip", "link", "set", name_a, "master", bridge, "up")
        self.in_ns(ns_b, "ip", "link", "set", name_b, "up")

    def _start_server(self, short: str) -> None:
        process = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.ns(short)}", "python3", "-c", SERVER, short],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.servers.append(process)
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready", f"server {short} did not start"

    def forward_policy_drop(self, node: str) -> None:
        """Docker's FORWARD policy: only what someone accepts is forwarded."""
        self.in_ns(node, "iptables-nft", "-P", "FORWARD", "DROP")

    # --- the engine -------------------------------------------------------------------

    def start_driver(
        self,
        node: str,
        mode: str,
        *,
        min_interval: float = 1.0,
        full_period: float = 30.0,
        canary_interval: float = 5.0,
    ) -> Driver:
        log = self.workdir / f"driver-{node}-{len(self.drivers)}.log"
        env = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT)}
        process = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{self.ns(node)}",
                "python3",
                "-c",
                DRIVER,
                mode,
                node,
                str(min_interval),
                str(full_period),
                str(canary_interval),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
            text=True,
            env=env,
        )
        driver = Driver(node=node, process=process, log=log)
        driver.start_reader()
        self.drivers.append(driver)
        return driver

    def feed(self, driver: Driver, services: list[dict[str, Any]]) -> None:
        """Everything an agent lists at start: both NodeAgents, the services, then go."""
        for node in NODE_ADDRESSES:
            driver.send({"node": node_agent(node)})
        for service in services:
            driver.send({"service": service})
        driver.send({"initial": True})

    # --- traffic ------------------------------------------------------------------------

    def connect(
        self,
        source: str,
        host: str,
        port: int,
        *,
        count: int = 1,
        proto: str = "tcp",
        src_port: int = 0,
        delay: float = 0.0,
    ) -> list[str]:
        out = self.in_ns(
            source, "python3", "-c", CLIENT, host, str(port), str(count), proto, str(src_port),
            str(delay),
        )  # fmt: skip
        return list(json.loads(out))

    def connect_in_background(
        self, source: str, host: str, port: int, *, count: int, delay: float
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.ns(source)}", "python3", "-c", CLIENT, host,
             str(port), str(count), "tcp", "0", str(delay)],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip

    # --- teardown ------------------------------------------------------------------------

    def destroy(self) -> None:
        for driver in self.drivers:
            driver.kill()
        for server in self.servers:
            if server.poll() is None:
                server.kill()
                server.wait(timeout=10)
        for short in ("c1", "e3", "e2", "e1", "n2", "n1", "r"):
            run("ip", "netns", "del", self.ns(short), check=False)


def node_agent(node: str) -> dict[str, Any]:
    return {
        "apiVersion": "kopflet.dev/v1alpha1",
        "kind": "NodeAgent",
        "metadata": {"name": node},
        "spec": {"instanceCIDR": NODE_SUBNETS[node]},
        "status": {"addresses": [{"type": "InternalIP", "address": NODE_ADDRESSES[node]}]},
    }


def proxy_service(
    name: str,
    *,
    cluster_ip: str,
    endpoints: list[str],
    port: int = 80,
    protocol: str = "TCP",
    node_port: int | None = None,
    affinity_timeout: int | None = None,
) -> dict[str, Any]:
    """A ProxyService as the controller leaves it: VIP allocated, ready endpoints listed."""
    spec: dict[str, Any] = {
        "type": "NodePort" if node_port else "ClusterIP",
        "clusterIP": cluster_ip,
        "selector": {"app": name},
        "ports": [{"name": "p", "protocol": protocol, "port": port, "targetPort": 8080}],
    }
    if node_port:
        spec["ports"][0]["nodePort"] = node_port
    if affinity_timeout is not None:
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": affinity_timeout}}
    return {
        "apiVersion": "kopflet.dev/v1alpha1",
        "kind": "ProxyService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
        "status": {
            "endpoints": [
                {
                    "ip": ENDPOINTS[e][1],
                    "ready": True,
                    "instance": e,
                    "nodeName": ENDPOINTS[e][0],
                    "ports": [{"name": "p", "port": 8080, "protocol": protocol}],
                }
                for e in endpoints
            ]
        },
    }


_counter = 0


@contextlib.contextmanager
def topology(tmp_path: Path) -> Iterator[Topology]:
    global _counter
    require_root_and_tools()
    _counter += 1
    topo = Topology(tag=f"{os.getpid() % 10000}{_counter}", workdir=tmp_path)
    try:
        topo.build()
        yield topo
    finally:
        topo.destroy()


def saved_rules(topo: Topology, node: str) -> dict[str, str]:
    """Every rule of the node, both iptables variants and nft, without timestamps/counters."""

    def strip(text: str) -> str:
        return "\n".join(
            line.split(" [")[0] if line.startswith(":") else line
            for line in text.splitlines()
            if not line.startswith("#")
        )

    nft = topo.in_ns(node, "nft", "list", "ruleset")
    return {
        "iptables-nft": strip(topo.in_ns(node, "iptables-nft-save")),
        "iptables-legacy": strip(topo.in_ns(node, "iptables-legacy-save", check=False)),
        "nft": re.sub(r"counter packets \d+ bytes \d+", "counter", nft),
        "routes": topo.in_ns(node, "ip", "route", "show"),
        "links": topo.in_ns(node, "ip", "-br", "link", "show"),
    }
