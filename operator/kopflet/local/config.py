"""Where a local cluster lives: its names, addresses, ports and directories. Pure data."""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class NodeConfig:
    name: str
    index: int
    #: network namespace, as under /run/netns
    netns: str
    #: host end of the veth pair (15 characters at most)
    veth_host: str
    address: str
    run_dir: Path
    data_dir: Path

    @property
    def netns_path(self) -> Path:
        return Path("/run/netns") / self.netns

    @property
    def docker_socket(self) -> Path:
        return self.run_dir / "docker.sock"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.docker_socket}"


@dataclass(frozen=True)
class ClusterConfig:
    """One local cluster. ``index`` keeps clusters apart: ports, bridge and subnet derive from it,
    so a developer's ``kopflet up`` and a test run can live side by side."""

    name: str = "kopflet"
    index: int = 0
    nodes: int = 3
    state_root: Path = Path("/var/lib/kopflet")
    run_root: Path = Path("/run/kopflet")

    @property
    def state_dir(self) -> Path:
        return self.state_root / self.name

    @property
    def run_dir(self) -> Path:
        return self.run_root / self.name

    @property
    def bridge(self) -> str:
        return f"kopflet{self.index}"

    @property
    def bridge_network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"172.30.{self.index}.0/24")

    @property
    def host_address(self) -> str:
        """The host's address on the nodes' bridge; the API server listens here."""
        return str(self.bridge_network.network_address + 1)

    @property
    def etcd_client_port(self) -> int:
        return 2379 + 10 * self.index

    @property
    def etcd_peer_port(self) -> int:
        return 2380 + 10 * self.index

    @property
    def apiserver_port(self) -> int:
        return 6443 + self.index

    @property
    def controller_manager_port(self) -> int:
        return 10257 + 10 * self.index

    @property
    def controller_metrics_port(self) -> int:
        return 10290 + 100 * self.index

    @property
    def controller_health_port(self) -> int:
        return 10291 + 100 * self.index

    @property
    def apiserver_url(self) -> str:
        return f"https://{self.host_address}:{self.apiserver_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "admin.kubeconfig"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def status_file(self) -> Path:
        return self.run_dir / "status.json"

    @property
    def supervisor_pidfile(self) -> Path:
        return self.run_dir / "supervisor.pid"

    @property
    def saved_file(self) -> Path:
        """What the cluster was started with (its index), for commands that name it only."""
        return self.state_dir / "cluster.json"

    def save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.saved_file.write_text(json.dumps({"index": self.index}) + "\n")

    def node(self, i: int) -> NodeConfig:
        """Node ``i`` counts from 1, as ``node-1`` is the first node."""
        name = f"node-{i}"
        return NodeConfig(
            name=name,
            index=i,
            netns=f"kopflet{self.index}-{name}",
            veth_host=f"kf{self.index}n{i}",
            address=str(self.bridge_network.network_address + 10 + i),
            run_dir=self.run_dir / name,
            data_dir=self.state_dir / "nodes" / name,
        )

    def node_configs(self) -> list[NodeConfig]:
        return [self.node(i) for i in range(1, self.nodes + 1)]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kopflet"


def saved_index(state_root: Path, name: str) -> int | None:
    """The index the cluster ``name`` was last started with, if it has left its state."""
    try:
        saved = json.loads(ClusterConfig(name=name, state_root=state_root).saved_file.read_text())
    except (OSError, ValueError):
        return None
    index = saved.get("index") if isinstance(saved, dict) else None
    return index if isinstance(index, int) else None


def cluster_index(state_root: Path, name: str, given: int | None) -> int:
    """The index a command acts on: the one given, else the cluster's own, else 0."""
    if given is not None:
        return given
    return saved_index(state_root, name) or 0
