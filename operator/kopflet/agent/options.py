"""``kopflet agent`` flags, parsed into the settings of the agent and of its two engines."""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from kopflet.agent.observability import LOG_FORMATS
from kopflet.agent.proxy import PROXY_MODES, ProxyMode, SyncPolicy
from kopflet.agent.runtime import BackoffPolicy
from kopflet.agent.runtime.container_config import capability_name

DEFAULT_DOCKER_HOST: Final = "unix:///var/run/docker.sock"
DEFAULT_STATE_DIR: Final = Path("/var/lib/kopflet-agent")
#: Tried in order when ``--sandbox-image`` is not given: the busybox image the local
#: cluster loads into every engine (any tag), then a busybox a registry can serve.
LOCAL_SANDBOX_REPOSITORY: Final = "kopflet/busybox"
FALLBACK_SANDBOX_IMAGE: Final = "busybox:1.36"
#: The kubelet's ports for its health endpoint and kube-proxy's for its metrics.
DEFAULT_HEALTH_PORT: Final = 10248
DEFAULT_METRICS_PORT: Final = 10249


class OptionsError(ValueError):
    pass


@dataclass(frozen=True, kw_only=True)
class AgentOptions:
    node_name: str
    kubeconfig: str | None
    docker_host: str
    #: ``None``: the address of the interface holding the default route.
    node_address: str | None
    proxy_mode: ProxyMode
    #: ``None``: found on the engine (see ``LOCAL_SANDBOX_REPOSITORY``).
    sandbox_image: str | None
    state_dir: Path
    allow_privileged: bool
    allow_host_path: bool
    #: Capabilities containers may add beyond the engine's default set (``ALL``: any).
    allowed_capabilities: frozenset[str]
    crash_backoff: BackoffPolicy
    image_backoff: BackoffPolicy
    relist_period: float
    evented_relist_period: float
    relist_threshold: float
    resync_period: float
    termination_message_lines: int
    proxy_policy: SyncPolicy
    node_status_period: float
    max_instances: int
    max_parallel_starts: int
    metrics_port: int
    health_port: int
    bind_address: str
    log_format: str
    log_level: str
    cleanup: bool

    @property
    def volumes_dir(self) -> Path:
        """Instance volumes: one directory per (node, engine), because the runtime removes
        volumes of instances it does not know, and two agents on one host (the local
        cluster's nodes, or two clusters) must never take each other's for orphans."""
        engine = hashlib.sha256(self.docker_host.encode()).hexdigest()[:10]
        return self.state_dir / "volumes" / f"{self.node_name}-{engine}"


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port: {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kopflet agent",
        description="Run one node: its instances in the node's Docker engine (the kubelet "
        "role) and its service rules (the kube-proxy role), from the Kubernetes API.",
    )
    p.add_argument("--kubeconfig", help="kubeconfig to use (default: in-cluster credentials)")
    p.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME"),
        help="this node's name (default: $NODE_NAME)",
    )
    p.add_argument(
        "--docker-host",
        default=DEFAULT_DOCKER_HOST,
        help="the node's Docker engine (default: %(default)s)",
    )
    p.add_argument(
        "--node-address",
        help="the node's InternalIP (default: the address of the interface holding "
        "the default route)",
    )
    p.add_argument(
        "--proxy-mode",
        choices=PROXY_MODES,
        default="iptables",
        help="how services are programmed (default: %(default)s)",
    )
    p.add_argument(
        "--sandbox-image",
        help=f"image of the sandbox holding the network namespace of an instance of several "
        f"containers; one container holds its own (default: a local "
        f"{LOCAL_SANDBOX_REPOSITORY} image, else {FALLBACK_SANDBOX_IMAGE}); it must have `sleep`",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="instance volumes live below it; the engine must see the same path "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--allow-privileged",
        action="store_true",
        help="run containers that ask for securityContext.privileged",
    )
    p.add_argument(
        "--allow-host-path",
        action="store_true",
        help="allow hostPath volumes (never the container engine's socket or a directory above it)",
    )
    p.add_argument(
        "--allow-capability",
        action="append",
        default=[],
        metavar="NAME",
        help="a capability containers may add beyond the engine's default set "
        "(repeatable; ALL: any)",
    )

    g = p.add_argument_group("runtime timing")
    g.add_argument("--crash-backoff-initial", type=_positive, default=10.0, metavar="SECONDS")
    g.add_argument("--crash-backoff-max", type=_positive, default=300.0, metavar="SECONDS")
    g.add_argument(
        "--crash-backoff-reset",
        type=_positive,
        default=600.0,
        metavar="SECONDS",
        help="running this long forgets earlier crashes (default: %(default)s)",
    )
    g.add_argument("--image-backoff-initial", type=_positive, default=10.0, metavar="SECONDS")
    g.add_argument("--image-backoff-max", type=_positive, default=300.0, metavar="SECONDS")
    g.add_argument(
        "--relist-period",
        type=_positive,
        default=1.0,
        metavar="SECONDS",
        help="the engine listed this often while its event stream is broken (default: %(default)s)",
    )
    g.add_argument(
        "--evented-relist-period",
        type=_positive,
        default=30.0,
        metavar="SECONDS",
        help="... and while the stream is open (default: %(default)s)",
    )
    g.add_argument(
        "--relist-threshold",
        type=_positive,
        default=180.0,
        metavar="SECONDS",
        help="a relist older than this makes the node not Ready",
    )
    g.add_argument("--resync-period", type=_positive, default=60.0, metavar="SECONDS")
    g.add_argument("--termination-message-lines", type=int, default=80, metavar="N")
    g.add_argument("--node-status-period", type=_positive, default=10.0, metavar="SECONDS")
    g.add_argument("--max-instances", type=int, default=110, metavar="N")
    g.add_argument(
        "--max-parallel-starts",
        type=_non_negative_int,
        default=10,
        metavar="N",
        help="containers created and started at once on the engine, the rest wait their "
        "turn; image pulls are not counted (0: no limit; default: %(default)s)",
    )

    g = p.add_argument_group("proxy timing")
    g.add_argument("--proxy-min-sync-interval", type=_positive, default=1.0, metavar="SECONDS")
    g.add_argument("--proxy-full-resync-period", type=_positive, default=30.0, metavar="SECONDS")
    g.add_argument("--proxy-canary-interval", type=_positive, default=5.0, metavar="SECONDS")

    g = p.add_argument_group("observability")
    g.add_argument(
        "--metrics-port",
        type=_port,
        default=DEFAULT_METRICS_PORT,
        help="Prometheus /metrics (0: off; default: %(default)s)",
    )
    g.add_argument(
        "--health-port",
        type=_port,
        default=DEFAULT_HEALTH_PORT,
        help="/healthz and /livez (0: off; default: %(default)s)",
    )
    g.add_argument(
        "--bind-address",
        default="0.0.0.0",
        help="address of the two endpoints (default: %(default)s)",
    )
    g.add_argument("--log-format", choices=LOG_FORMATS, default="text")
    g.add_argument(
        "--log-level", default="INFO", choices=("TRACE", "DEBUG", "INFO", "WARNING", "ERROR")
    )

    p.add_argument(
        "--cleanup",
        action="store_true",
        help="remove every netfilter chain, table and route of ours, then exit",
    )
    return p


def parse_options(argv: Sequence[str]) -> AgentOptions:
    args = build_parser().parse_args(list(argv))
    if not args.node_name and not args.cleanup:
        raise OptionsError("--node-name is required (or set $NODE_NAME)")
    return AgentOptions(
        node_name=args.node_name or "",
        kubeconfig=args.kubeconfig,
        docker_host=args.docker_host,
        node_address=args.node_address,
        proxy_mode=args.proxy_mode,
        sandbox_image=args.sandbox_image,
        state_dir=args.state_dir,
        allow_privileged=args.allow_privileged,
        allow_host_path=args.allow_host_path,
        allowed_capabilities=frozenset(capability_name(c) for c in args.allow_capability),
        crash_backoff=BackoffPolicy(
            initial_seconds=args.crash_backoff_initial,
            max_seconds=args.crash_backoff_max,
            reset_after_seconds=args.crash_backoff_reset,
        ),
        image_backoff=BackoffPolicy(
            initial_seconds=args.image_backoff_initial, max_seconds=args.image_backoff_max
        ),
        relist_period=args.relist_period,
        evented_relist_period=args.evented_relist_period,
        relist_threshold=args.relist_threshold,
        resync_period=args.resync_period,
        termination_message_lines=args.termination_message_lines,
        proxy_policy=SyncPolicy(
            min_interval=args.proxy_min_sync_interval,
            full_period=args.proxy_full_resync_period,
            canary_interval=args.proxy_canary_interval,
        ),
        node_status_period=args.node_status_period,
        max_instances=args.max_instances,
        max_parallel_starts=args.max_parallel_starts,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        bind_address=args.bind_address,
        log_format=args.log_format,
        log_level=args.log_level,
        cleanup=args.cleanup,
    )
