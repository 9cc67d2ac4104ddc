"""The controller's flags, parsed into one frozen value."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass

from kopflet.api.constants import SYSTEM_NAMESPACE
from kopflet.controller.address_pools import AddressPool, PortPool, SubnetPool
from kopflet.controller.logs import LogFormat


@dataclass(frozen=True)
class ControllerOptions:
    kubeconfig: str | None = None
    node_grace_period: float = 40.0
    eviction_timeout: float = 30.0
    not_ready_eviction_timeout: float = 300.0
    cluster_cidr: str = "10.244.0.0/16"
    node_cidr_size: int = 24
    service_cidr: str = "10.96.0.0/16"
    node_port_range: str = "30000-32767"
    metrics_port: int = 10290
    health_port: int = 10291
    bind_address: str = "0.0.0.0"
    log_format: LogFormat = "text"
    log_level: str = "INFO"
    leader_elect: bool = True
    leader_election_namespace: str = SYSTEM_NAMESPACE
    leader_election_name: str = "kopflet-controller"

    @property
    def subnet_pool(self) -> SubnetPool:
        return SubnetPool.parse(self.cluster_cidr, self.node_cidr_size)

    @property
    def service_pool(self) -> AddressPool:
        return AddressPool.parse(self.service_cidr)

    @property
    def node_port_pool(self) -> PortPool:
        return PortPool.parse(self.node_port_range)


def duration(text: str) -> float:
    """``40s``, ``2m``, ``1m30s`` or plain seconds (``40``)."""
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use 40s, 2m, 1m30s)")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def parse_options(argv: Sequence[str]) -> ControllerOptions:
    defaults = ControllerOptions()
    p = argparse.ArgumentParser(
        prog="kopflet controller",
        description="Workloads into Instances, scheduling, node lifecycle and IPAM, services.",
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster ServiceAccount)")
    p.add_argument(
        "--node-grace-period",
        type=duration,
        default=defaults.node_grace_period,
        help="a node whose Lease is not renewed for this long is Ready=Unknown (40s)",
    )
    p.add_argument(
        "--eviction-timeout",
        type=duration,
        default=defaults.eviction_timeout,
        help="Instances of a node unreachable (Ready=Unknown) this long are evicted (30s)",
    )
    p.add_argument(
        "--not-ready-eviction-timeout",
        type=duration,
        default=defaults.not_ready_eviction_timeout,
        help="Instances of a node whose agent reports it not Ready this long are evicted (300s)",
    )
    p.add_argument(
        "--cluster-cidr",
        default=defaults.cluster_cidr,
        help="range of the nodes' instance subnets (%(default)s)",
    )
    p.add_argument(
        "--node-cidr-size",
        type=int,
        default=defaults.node_cidr_size,
        help="prefix length of one node's instance subnet (%(default)s)",
    )
    p.add_argument(
        "--service-cidr",
        default=defaults.service_cidr,
        help="range of ProxyService clusterIPs (%(default)s)",
    )
    p.add_argument(
        "--node-port-range",
        default=defaults.node_port_range,
        help="range of ProxyService nodePorts (%(default)s)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=defaults.metrics_port,
        help="Prometheus metrics port, 0 to disable (%(default)s)",
    )
    p.add_argument(
        "--health-port",
        type=int,
        default=defaults.health_port,
        help="/healthz and /readyz port, 0 to disable (%(default)s)",
    )
    p.add_argument(
        "--bind-address",
        default=defaults.bind_address,
        help="address the metrics and health endpoints listen on (%(default)s)",
    )
    p.add_argument("--log-format", choices=("text", "json"), default=defaults.log_format)
    p.add_argument("--log-level", default=defaults.log_level)
    p.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=defaults.leader_elect,
        help="run only while holding the leader Lease (default: on)",
    )
    p.add_argument("--leader-election-namespace", default=defaults.leader_election_namespace)
    p.add_argument("--leader-election-name", default=defaults.leader_election_name)
    args = p.parse_args(list(argv))
    options = ControllerOptions(
        kubeconfig=args.kubeconfig,
        node_grace_period=args.node_grace_period,
        eviction_timeout=args.eviction_timeout,
        not_ready_eviction_timeout=args.not_ready_eviction_timeout,
        cluster_cidr=args.cluster_cidr,
        node_cidr_size=args.node_cidr_size,
        service_cidr=args.service_cidr,
        node_port_range=args.node_port_range,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        bind_address=args.bind_address,
        log_format=args.log_format,
        log_level=args.log_level.upper(),
        leader_elect=args.leader_elect,
        leader_election_namespace=args.leader_election_namespace,
        leader_election_name=args.leader_election_name,
    )
    try:  # refuse bad ranges at start, not at the first allocation
        _ = options.subnet_pool, options.service_pool, options.node_port_pool
    except ValueError as error:
        p.error(str(error))
    return options
