"""ProxyService / NodeAgent dicts to the proxy's values."""

from __future__ import annotations

from typing import Any

import pytest

from kopflet.agent.proxy.conversion import (
    node_route_from_object,
    service_key,
    service_ports_from_object,
)
from kopflet.agent.proxy.model import (
    EndpointInfo,
    NodeName,
    NodeRoute,
    ServicePortInfo,
    ServicePortName,
)
from kopflet.api import ModelError

pytestmark = pytest.mark.unit


def proxy_service(**spec: Any) -> dict[str, Any]:
    endpoints = spec.pop("endpoints", None)
    obj: dict[str, Any] = {
        "apiVersion": "kopflet.dev/v1alpha1",
        "kind": "ProxyService",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "10.96.0.10",
            "selector": {"app": "web"},
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http"}],
            **spec,
        },
    }
    if endpoints is not None:
        obj["status"] = {"endpoints": endpoints}
    return obj


def endpoint(
    ip: str, *, ready: bool = True, port: int = 8080, name: str = "http"
) -> dict[str, Any]:
    return {
        "ip": ip,
        "ready": ready,
        "instance": f"web-{ip.rsplit('.', 1)[1]}",
        "nodeName": "node-b",
        "ports": [{"name": name, "port": port, "protocol": "TCP"}],
    }


HTTP = ServicePortName("default", "web", "http")


def test_ready_endpoints_resolve_their_named_target_port_and_unready_ones_are_left_out() -> None:
    obj = proxy_service(
        endpoints=[
            endpoint("10.244.2.3"),
            endpoint("10.244.1.2", port=9090),
            endpoint("10.244.3.4", ready=False),
        ]
    )
    assert service_ports_from_object(obj) == {
        HTTP: ServicePortInfo(
            cluster_ip="10.96.0.10",
            port=80,
            protocol="TCP",
            endpoints=(
                EndpointInfo("10.244.1.2", 9090, NodeName("node-b"), "web-2"),
                EndpointInfo("10.244.2.3", 8080, NodeName("node-b"), "web-3"),
            ),
        )
    }


def test_node_port_counts_only_for_node_port_services_and_affinity_defaults_to_3_hours() -> None:
    obj = proxy_service(
        type="NodePort",
        ports=[
            {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30080}
        ],
        sessionAffinity="ClientIP",
    )
    info = service_ports_from_object(obj)[HTTP]
    assert (info.node_port, info.affinity_timeout) == (30080, 10800)
    obj["spec"]["type"] = "ClusterIP"
    obj["spec"]["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": 30}}
    info = service_ports_from_object(obj)[HTTP]
    assert (info.node_port, info.affinity_timeout) == (None, 30)


def test_numeric_target_port_applies_to_endpoints_without_resolved_ports() -> None:
    obj = proxy_service(
        ports=[{"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353}],
        endpoints=[{"ip": "10.244.1.2", "ready": True}],
    )
    info = service_ports_from_object(obj)[ServicePortName("default", "web", "dns")]
    assert info.protocol == "UDP"
    assert info.endpoints == (EndpointInfo("10.244.1.2", 5353),)


def test_named_target_port_without_a_resolved_port_has_no_endpoint() -> None:
    obj = proxy_service(endpoints=[{"ip": "10.244.1.2", "ready": True}])
    assert service_ports_from_object(obj)[HTTP].endpoints == ()


def test_each_port_of_a_multi_port_service_picks_its_own_resolved_port() -> None:
    obj = proxy_service(
        ports=[
            {"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http"},
            {"name": "admin", "protocol": "TCP", "port": 81, "targetPort": "admin"},
        ],
        endpoints=[
            {
                "ip": "10.244.1.2",
                "ready": True,
                "ports": [{"name": "http", "port": 8080}, {"name": "admin", "port": 9000}],
            }
        ],
    )
    ports = service_ports_from_object(obj)
    assert ports[HTTP].endpoints == (EndpointInfo("10.244.1.2", 8080),)
    assert ports[ServicePortName("default", "web", "admin")].endpoints == (
        EndpointInfo("10.244.1.2", 9000),
    )


@pytest.mark.parametrize("cluster_ip", [None, "", "None"])
def test_service_without_a_virtual_ip_has_nothing_to_program(cluster_ip: str | None) -> None:
    obj = proxy_service(endpoints=[endpoint("10.244.1.2")])
    if cluster_ip is None:
        del obj["spec"]["clusterIP"]
    else:
        obj["spec"]["clusterIP"] = cluster_ip
    assert service_ports_from_object(obj) == {}


def test_malformed_service_raises_model_error() -> None:
    obj = proxy_service()
    obj["spec"]["ports"] = "eighty"
    with pytest.raises(ModelError):
        service_ports_from_object(obj)


def test_service_key_reads_only_metadata() -> None:
    assert service_key({"metadata": {"namespace": "ns", "name": "x"}}) == ("ns", "x")


def test_node_route_needs_both_subnet_and_internal_address() -> None:
    obj: dict[str, Any] = {
        "metadata": {"name": "node-b"},
        "spec": {"instanceCIDR": "10.244.2.0/24"},
        "status": {
            "addresses": [
                {"type": "Hostname", "address": "node-b"},
                {"type": "InternalIP", "address": "172.30.0.12"},
            ]
        },
    }
    assert node_route_from_object(obj) == NodeRoute(
        NodeName("node-b"), "10.244.2.0/24", "172.30.0.12"
    )
    del obj["status"]
    assert node_route_from_object(obj) is None
