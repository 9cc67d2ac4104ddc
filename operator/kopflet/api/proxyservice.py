"""ProxyService: a virtual IP (and optional node port) over the ready Instances it selects."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from kopflet.api._codec import Model, wire
from kopflet.api.constants import API_VERSION
from kopflet.api.containers import Protocol
from kopflet.api.meta import Condition, ObjectMeta
from kopflet.api.probes import IntOrString

ServiceType = Literal["ClusterIP", "NodePort"]
SessionAffinity = Literal["None", "ClientIP"]

#: Core defaults: the node port range and the ClientIP affinity timeout (3 hours).
NODE_PORT_RANGE = range(30000, 32768)
DEFAULT_SESSION_AFFINITY_TIMEOUT_SECONDS = 10800


@dataclass(frozen=True, kw_only=True)
class ServicePort(Model):
    port: int
    name: str | None = None
    protocol: Protocol | None = None
    target_port: IntOrString | None = None
    node_port: int | None = None

    @property
    def effective_target_port(self) -> IntOrString:
        """Core rule: an absent ``targetPort`` is the same number as ``port``."""
        return self.port if self.target_port is None else self.target_port


@dataclass(frozen=True, kw_only=True)
class ClientIPConfig(Model):
    timeout_seconds: int | None = None


@dataclass(frozen=True, kw_only=True)
class SessionAffinityConfig(Model):
    client_ip: ClientIPConfig | None = field(default=None, metadata=wire("clientIP"))


@dataclass(frozen=True, kw_only=True)
class ProxyServiceSpec(Model):
    """``cluster_ip`` is allocated by the controller unless the user sets it, and is
    immutable once set (the CRD enforces it)."""

    ports: tuple[ServicePort, ...]
    selector: Mapping[str, str] | None = None
    type: ServiceType | None = None
    cluster_ip: str | None = field(default=None, metadata=wire("clusterIP"))
    session_affinity: SessionAffinity | None = None
    session_affinity_config: SessionAffinityConfig | None = None

    @property
    def affinity_timeout_seconds(self) -> int | None:
        """Seconds a client sticks to one endpoint, or ``None`` without ClientIP affinity."""
        if self.session_affinity != "ClientIP":
            return None
        config = self.session_affinity_config
        timeout = config.client_ip.timeout_seconds if config and config.client_ip else None
        return DEFAULT_SESSION_AFFINITY_TIMEOUT_SECONDS if timeout is None else timeout


@dataclass(frozen=True, kw_only=True)
class EndpointPort(Model):
    """A service port resolved on one Instance (named target ports differ per Instance)."""

    port: int
    name: str | None = None
    protocol: Protocol | None = None


@dataclass(frozen=True, kw_only=True)
class Endpoint(Model):
    ip: str
    ready: bool
    instance: str | None = None
    node_name: str | None = None
    ports: tuple[EndpointPort, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class ProxyServiceStatus(Model):
    """Written by the controller. The summaries feed the PORTS and ENDPOINTS columns."""

    observed_generation: int | None = None
    endpoints: tuple[Endpoint, ...] | None = None
    ports_summary: str | None = None
    endpoints_summary: str | None = None
    conditions: tuple[Condition, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class ProxyService(Model):
    metadata: ObjectMeta
    spec: ProxyServiceSpec
    status: ProxyServiceStatus | None = None
    api_version: str = API_VERSION
    kind: str = "ProxyService"


def summarize_ports(spec: ProxyServiceSpec) -> str:
    """``80:30080/TCP,53/UDP``, as the PORTS column of ``kubectl get services``."""
    parts = []
    for p in spec.ports:
        node = f":{p.node_port}" if p.node_port is not None else ""
        parts.append(f"{p.port}{node}/{p.protocol or 'TCP'}")
    return ",".join(parts)


def summarize_endpoints(endpoints: Iterable[Endpoint], *, limit: int = 3) -> str:
    """``10.244.1.2:8080,10.244.2.3:8080 + 1 more...`` over the ready endpoints,
    as ``kubectl get endpoints`` prints them; ``<none>`` when none is ready."""
    addresses = []
    for e in endpoints:
        if not e.ready:
            continue
        ports = [p.port for p in e.ports or ()]
        addresses += [f"{e.ip}:{port}" for port in ports] if ports else [e.ip]
    if not addresses:
        return "<none>"
    shown = ",".join(addresses[:limit])
    extra = len(addresses) - limit
    return f"{shown} + {extra} more..." if extra > 0 else shown
