"""ProxyService and NodeAgent objects (as the API server hands them out) to proxy values.

Pure functions over the typed API models; a bad shape raises :class:`ModelError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kopflet.agent.proxy.model import (
    EndpointInfo,
    L4Protocol,
    NodeName,
    NodeRoute,
    ServicePortInfo,
    ServicePortName,
)
from kopflet.api import Endpoint, NodeAgent, ProxyService
from kopflet.api import ServicePort as ApiServicePort

#: ``spec.clusterIP`` values that mean "no virtual IP" (not yet allocated, or headless).
_NO_CLUSTER_IP = frozenset({"", "None"})


def service_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(namespace, name) of an object dict, without parsing the rest of it."""
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def service_ports_from_object(obj: Mapping[str, Any]) -> dict[ServicePortName, ServicePortInfo]:
    """Every programmable service-port of one ProxyService, with its ready endpoints.

    A service without a virtual IP yet has nothing to program. Only ready endpoints
    count, whatever the controller listed: an unready one must leave rotation.
    """
    service = ProxyService.from_dict(obj)
    namespace, name = service_key(obj)
    spec = service.spec
    if spec.cluster_ip is None or spec.cluster_ip in _NO_CLUSTER_IP:
        return {}
    endpoints = [e for e in (service.status.endpoints or ()) if e.ready] if service.status else []
    affinity = spec.affinity_timeout_seconds
    single_port = len(spec.ports) == 1
    result: dict[ServicePortName, ServicePortInfo] = {}
    for port in spec.ports:
        protocol: L4Protocol = port.protocol or "TCP"
        resolved = (
            _endpoint_info(endpoint, port, protocol=protocol, single_port=single_port)
            for endpoint in endpoints
        )
        result[ServicePortName(namespace, name, port.name or "")] = ServicePortInfo(
            cluster_ip=spec.cluster_ip,
            port=port.port,
            protocol=protocol,
            endpoints=tuple(sorted({e for e in resolved if e is not None})),
            node_port=port.node_port if spec.type == "NodePort" else None,
            affinity_timeout=affinity,
        )
    return result


def _endpoint_info(
    endpoint: Endpoint, port: ApiServicePort, *, protocol: L4Protocol, single_port: bool
) -> EndpointInfo | None:
    """The endpoint's address for this service-port, or ``None`` if it doesn't serve it.

    The controller resolves (named) target ports per instance and lists them by the
    service-port's name. Without a resolved port, a numeric ``targetPort`` is the same
    on every instance, so it is used as is; a named one can't be guessed.
    """
    wanted = port.name or ""
    candidates = [
        p
        for p in endpoint.ports or ()
        if (p.name or "") == wanted and (p.protocol or "TCP") == protocol
    ]
    if not candidates and single_port and endpoint.ports and len(endpoint.ports) == 1:
        candidates = list(endpoint.ports)
    if candidates:
        number = candidates[0].port
    elif isinstance(port.effective_target_port, int):
        number = port.effective_target_port
    else:
        return None
    node = NodeName(endpoint.node_name) if endpoint.node_name else None
    return EndpointInfo(ip=endpoint.ip, port=number, node_name=node, instance=endpoint.instance)


def node_route_from_object(obj: Mapping[str, Any]) -> NodeRoute | None:
    """The node's instance subnet and the address to route it via, once both are known."""
    agent = NodeAgent.from_dict(obj)
    cidr = agent.spec.instance_cidr if agent.spec else None
    addresses = (agent.status.addresses or ()) if agent.status else ()
    internal = [a.address for a in addresses if a.type == "InternalIP"]
    if not cidr or not internal:
        return None
    return NodeRoute(
        node_name=NodeName(agent.metadata.name or ""), instance_cidr=cidr, address=internal[0]
    )
