"""A ProxyService's endpoints: the ready Instances its selector matches, each with the service
ports resolved on that Instance (a named targetPort can be a different number per Instance).
Pure; the proxies read exactly this list from ``status.endpoints``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from kopflet.api import (
    Endpoint,
    EndpointPort,
    Instance,
    ProxyService,
    ProxyServiceStatus,
    ServicePort,
    summarize_endpoints,
    summarize_ports,
)
from kopflet.controller.instance_state import is_ready


def selects(selector: Mapping[str, str] | None, labels: Mapping[str, str] | None) -> bool:
    """An empty or absent selector selects nothing: such a service's endpoints are not ours."""
    if not selector:
        return False
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def resolve_target_port(port: ServicePort, instance: Instance) -> int | None:
    target = port.effective_target_port
    if isinstance(target, int):
        return target
    protocol = port.protocol or "TCP"
    for container in instance.spec.containers:
        for declared in container.ports or ():
            if declared.name == target and (declared.protocol or "TCP") == protocol:
                return declared.container_port
    return None


def service_endpoints(service: ProxyService, instances: Iterable[Instance]) -> tuple[Endpoint, ...]:
    """One endpoint per ready, selected Instance with an IP and at least one resolved port."""
    found = []
    for instance in instances:
        if not selects(service.spec.selector, instance.metadata.labels) or not is_ready(instance):
            continue
        ip = instance.status.instance_ip if instance.status else None
        if not ip:
            continue
        ports = []
        for port in service.spec.ports:
            number = resolve_target_port(port, instance)
            if number is not None:
                ports.append(EndpointPort(port=number, name=port.name, protocol=port.protocol))
        if not ports:
            continue
        found.append(
            Endpoint(
                ip=ip,
                ready=True,
                instance=instance.metadata.name,
                node_name=instance.spec.node_name,
                ports=tuple(ports),
            )
        )
    return tuple(sorted(found, key=lambda e: (e.ip, e.instance or "")))


def service_status(
    service: ProxyService, endpoints: tuple[Endpoint, ...] | None
) -> ProxyServiceStatus:
    """The status the controller wants, keeping its conditions; ``endpoints=None`` leaves the
    endpoints as they are (a service without a selector has its endpoints managed by hand)."""
    current = service.status or ProxyServiceStatus()
    listed = current.endpoints if endpoints is None else endpoints
    return replace(
        current,
        observed_generation=service.metadata.generation,
        endpoints=tuple(listed or ()),
        ports_summary=summarize_ports(service.spec),
        endpoints_summary=summarize_endpoints(listed or ()),
    )
