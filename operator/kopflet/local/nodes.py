"""Nodes of the local cluster: a network namespace each on one bridge, with its own dockerd.

The namespaces hold only a network stack: mounts, cgroups and processes stay the host's, so each
node's dockerd sees the host's cgroup hierarchy as dockerd on a real node does, and keeps its data
and sockets in directories of its own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import docker

from kopflet.local.components import Component
from kopflet.local.config import ClusterConfig, NodeConfig


class NodeSetupError(RuntimeError):
    pass


def _ip(
    *args: str, netns: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *args]
    if netns is not None:
        argv = ["nsenter", f"--net=/run/netns/{netns}", "--", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NodeSetupError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def ensure_bridge(config: ClusterConfig) -> None:
    if not _link_exists(config.bridge):
        _ip("link", "add", config.bridge, "type", "bridge")
    prefix = config.bridge_network.prefixlen
    addresses = _ip("-o", "addr", "show", "dev", config.bridge).stdout
    if f" {config.host_address}/{prefix} " not in addresses:
        _ip("addr", "add", f"{config.host_address}/{prefix}", "dev", config.bridge)
    _ip("link", "set", config.bridge, "up")


def ensure_node_network(config: ClusterConfig, node: NodeConfig) -> None:
    if not node.netns_path.exists():
        _ip("netns", "add", node.netns)
    if not _link_exists(node.veth_host):
        _ip(
            "link",
            "add",
            node.veth_host,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            node.netns,
        )
    _ip("link", "set", node.veth_host, "master", config.bridge, "up")
    ns = node.netns
    _ip("link", "set", "lo", "up", netns=ns)
    prefix = config.bridge_network.prefixlen
    if (
        f" {node.address}/{prefix} "
        not in _ip("-o", "addr", "show", "dev", "eth0", netns=ns).stdout
    ):
        _ip("addr", "add", f"{node.address}/{prefix}", "dev", "eth0", netns=ns)
    _ip("link", "set", "eth0", "up", netns=ns)
    # The default route points at the host, which does not forward: a node reaches the API
    # server and the other nodes, and nothing beyond.
    _ip("route", "replace", "default", "via", config.host_address, netns=ns)
    # Bridged traffic through the node's netfilter rules, as kube-proxy requires: without it a
    # reply between two instances on one bridge skips conntrack and misses the virtual IP's
    # reverse NAT.
    if shutil.which("modprobe"):
        subprocess.run(["modprobe", "br_netfilter"], capture_output=True, check=False)
    if Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists():
        subprocess.run(
            [
                "nsenter",
                f"--net={node.netns_path}",
                "--",
                "sysctl",
                "-qw",
                "net.bridge.bridge-nf-call-iptables=1",
            ],
            capture_output=True,
            check=True,
        )
    for directory in (node.run_dir, node.data_dir):
        directory.mkdir(parents=True, exist_ok=True)


def dockerd_component(config: ClusterConfig, node: NodeConfig) -> Component:
    return Component(
        name="dockerd",
        node=node.name,
        netns_path=node.netns_path,
        argv=(
            "dockerd",
            "--data-root",
            str(node.data_dir / "docker"),
            "--exec-root",
            str(node.run_dir / "exec"),
            "--host",
            node.docker_host,
            "--pidfile",
            str(node.run_dir / "docker.pid"),
            # No default docker0: the agent makes the one network instances use.
            "--bridge=none",
            # Hairpin mode on bridge ports, so an instance reaches itself through a virtual IP.
            "--userland-proxy=false",
            "--log-level=warn",
        ),
        log_file=config.log_dir / f"{node.name}-dockerd.log",
        ready=lambda: engine_answers(node.docker_host),
        ready_timeout=90.0,
        stop_timeout=30.0,
    )


def engine_answers(docker_host: str) -> bool:
    try:
        client = docker.DockerClient(base_url=docker_host, version="auto", timeout=5)
    except docker.errors.DockerException:
        return False
    try:
        return bool(client.ping())
    except (docker.errors.DockerException, OSError):
        return False
    finally:
        client.close()


def alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for its parent to collect it (a process this
    one started and has not waited for stays in /proc until it does)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def reap(pid: int) -> None:
    """Collect ``pid`` if it is an exited child of ours; anyone else's is left alone."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _kill_pids(pids: list[int], *, timeout: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.2)


def netns_pids(netns: str) -> list[int]:
    out = _ip("netns", "pids", netns, check=False).stdout
    return [int(p) for p in out.split()]


def unmount_below(*roots: Path) -> None:
    """Lazily unmount everything dockerd and ``ip netns`` mounted under our directories,
    deepest first."""
    prefixes = tuple(str(r).rstrip("/") + "/" for r in roots)
    mounts: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mountpoint = line.split()[4].replace("\\040", " ")
            if mountpoint.startswith(prefixes) or mountpoint in {str(r) for r in roots}:
                mounts.append(mountpoint)
    for mountpoint in sorted(set(mounts), key=len, reverse=True):
        subprocess.run(["umount", "-l", mountpoint], capture_output=True, check=False)


def remove_node_network(node: NodeConfig) -> None:
    if node.netns_path.exists():
        _kill_pids(netns_pids(node.netns), timeout=10)
        _ip("netns", "del", node.netns, check=False)
    if _link_exists(node.veth_host):
        _ip("link", "del", node.veth_host, check=False)


def remove_bridge(config: ClusterConfig) -> None:
    if _link_exists(config.bridge):
        _ip("link", "del", config.bridge, check=False)


def our_netns(config: ClusterConfig) -> list[str]:
    """Every namespace of this cluster, also those of nodes a larger ``up`` made earlier."""
    directory = Path("/run/netns")
    if not directory.is_dir():
        return []
    return sorted(
        p.name for p in directory.iterdir() if p.name.startswith(f"kopflet{config.index}-")
    )
