"""What a node's agent tells its runtime half: identity, network, sandbox image, policy, timing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kopflet.agent.runtime.backoff import BackoffPolicy


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    node_name: str
    #: The node's instance subnet (``NodeAgent.spec.instanceCIDR``).
    instance_subnet: str
    #: Holds each instance's network namespace; must be present on the engine or pullable.
    sandbox_image: str
    #: Instance volumes live here; the engine must see the same path.
    volumes_dir: Path
    #: The node's address, reported as ``status.hostIP``.
    host_ip: str = ""
    network_name: str = "kopflet"
    bridge_name: str = "kopflet0"
    #: Sleeps forever in the sandbox (busybox ``sleep`` takes no "infinity").
    sandbox_command: tuple[str, ...] = ("sleep", "2147483647")
    allow_privileged: bool = False
    allow_host_path: bool = False
    #: Capabilities containers may add beyond the engine's default set (``ALL``: any).
    allowed_capabilities: frozenset[str] = frozenset()
    #: The engine's socket on the host: never mounted into a container, even with hostPath.
    engine_socket: str | None = None
    crash_backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    image_backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    #: How often the engine is listed in full while its event stream is broken.
    relist_period_seconds: float = 1.0
    #: ... and while the stream is open, when the listing is the backstop for a lost event
    #: (the kubelet's Evented PLEG slows its relist to 300 s).
    evented_relist_period_seconds: float = 30.0
    #: A relist older than this makes the runtime unhealthy (the kubelet uses 3 min).
    relist_threshold_seconds: float = 180.0
    #: Every instance is synced at least this often, even when nothing woke it (the
    #: kubelet's ``--sync-frequency``, 1 min).
    resync_period_seconds: float = 60.0
    #: Lines of a terminated container's log kept as its termination message.
    termination_message_lines: int = 80
    #: Containers (and sandboxes) created and started at once on the engine; more wait
    #: their turn (0: no limit). Image pulls are not counted.
    max_parallel_starts: int = 10
