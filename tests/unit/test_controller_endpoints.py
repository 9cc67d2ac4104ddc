"""ProxyService endpoints: ready, selected Instances with their target ports resolved."""

from __future__ import annotations

from typing import Any

import pytest

from kopflet.api import Endpoint, EndpointPort, Instance, ProxyService
from kopflet.controller.endpoints import service_endpoints, service_status

pytestmark = pytest.mark.unit


def service(*, selector: dict[str, str] | None = None, target: int | str = "http") -> ProxyService:
    spec: dict[str, Any] = {
        "ports": [{"name": "web", "port": 80, "targetPort": target, "protocol": "TCP"}]
    }
    if selector is not None:
        spec["selector"] = selector
    return ProxyService.from_dict(
        {"metadata": {"name": "s", "namespace": "ns", "generation": 3}, "spec": spec}
    )


def instance(
    name: str,
    ip: str | None,
    *,
    ready: bool = True,
    app: str = "web",
    port: int = 8080,
    deleting: bool = False,
) -> Instance:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "labels": {"app": app}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]
    }
    if ip:
        status["instanceIP"] = ip
    return Instance.from_dict(
        {
            "metadata": meta,
            "spec": {
                "nodeName": "n1",
                "containers": [
                    {"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": port}]}
                ],
            },
            "status": status,
        }
    )


def test_only_ready_selected_instances_with_an_address_are_endpoints_sorted_by_ip() -> None:
    found = service_endpoints(
        service(selector={"app": "web"}),
        [
            instance("b", "10.244.1.9"),
            instance("a", "10.244.1.3"),
            instance("unready", "10.244.1.4", ready=False),
            instance("other", "10.244.1.5", app="db"),
            instance("no-ip", None),
            instance("leaving", "10.244.1.6", deleting=True),
        ],
    )
    assert found == (
        Endpoint(
            ip="10.244.1.3",
            ready=True,
            instance="a",
            node_name="n1",
            ports=(EndpointPort(port=8080, name="web", protocol="TCP"),),
        ),
        Endpoint(
            ip="10.244.1.9",
            ready=True,
            instance="b",
            node_name="n1",
            ports=(EndpointPort(port=8080, name="web", protocol="TCP"),),
        ),
    )


def test_a_named_target_port_resolves_per_instance() -> None:
    found = service_endpoints(
        service(selector={"app": "web"}),
        [instance("a", "10.0.0.1", port=8080), instance("b", "10.0.0.2", port=9090)],
    )
    assert [e.ports[0].port for e in found if e.ports] == [8080, 9090]


def test_an_instance_without_the_named_port_is_no_endpoint() -> None:
    assert (
        service_endpoints(
            service(selector={"app": "web"}, target="grpc"), [instance("a", "10.0.0.1")]
        )
        == ()
    )


def test_an_empty_selector_selects_nothing() -> None:
    assert service_endpoints(service(selector={}), [instance("a", "10.0.0.1")]) == ()


def test_status_summarises_ports_and_endpoints() -> None:
    svc = service(selector={"app": "web"}, target=8080)
    status = service_status(svc, service_endpoints(svc, [instance("a", "10.0.0.1")]))
    assert status.observed_generation == 3
    assert status.ports_summary == "80/TCP"
    assert status.endpoints_summary == "10.0.0.1:8080"
    assert service_status(svc, ()).endpoints_summary == "<none>"
