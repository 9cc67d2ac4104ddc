"""ProxyServices on the real API server: clusterIPs and nodePorts unique under concurrency,
conflicts reported, endpoints following readiness within a second."""

from __future__ import annotations

import ipaddress
import random
import time
from concurrent.futures import ThreadPoolExecutor

from test_controller_harness import (
    Api,
    FakeNodes,
    admin,
    condition,
    controllers,
    fake_nodes,
    instances_of,
    is_ready,
    proxy_service,
    service_of,
    wait_available,
    workload,
)

from conftest import TestCluster
from kopflet.api.constants import (
    INSTANCE_PLURAL,
    PROXYSERVICE_PLURAL,
    SYSTEM_NAMESPACE,
    WORKLOAD_PLURAL,
)
from support import wait_for

__all__ = ["admin", "controllers", "fake_nodes"]

SERVICE_RANGE = ipaddress.IPv4Network("10.96.0.0/16")


def test_two_hundred_concurrent_creates_get_two_hundred_distinct_cluster_ips(
    cluster: TestCluster, admin: Api, controllers: object, namespace: str
) -> None:
    names = [f"svc-{n:03d}" for n in range(200)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        list(
            pool.map(
                lambda n: admin.create(PROXYSERVICE_PLURAL, proxy_service(n), namespace), names
            )
        )

    def allocated() -> dict[str, str] | None:
        found = {
            s["metadata"]["name"]: s["spec"].get("clusterIP")
            for s in admin.list(PROXYSERVICE_PLURAL, namespace)
        }
        return found if len(found) == 200 and all(found.values()) else None

    ips = wait_for(
        allocated,
        timeout=120,
        message="every service has a clusterIP",
        diagnose=lambda: cluster.log_tail("controller.log"),
    )
    assert len(set(ips.values())) == 200
    assert all(ipaddress.IPv4Address(ip) in SERVICE_RANGE for ip in ips.values())
    # Each IP is recorded exactly once, for its own service.
    records = admin.coordination.list_namespaced_lease(
        SYSTEM_NAMESPACE, label_selector="kopflet.dev/allocation=clusterip"
    ).items
    holders = {
        r.metadata.annotations["kopflet.dev/value"]: r.metadata.annotations[
            "kopflet.dev/holder-name"
        ]
        for r in records
        if r.metadata.annotations.get("kopflet.dev/holder-namespace") == namespace
    }
    assert holders == {ip: name for name, ip in ips.items()}
    ready = condition(service_of(admin, namespace, names[0]), "Allocated")
    assert ready is not None and ready["status"] == "True"


def test_a_requested_node_port_held_by_another_service_is_refused_with_a_condition(
    cluster: TestCluster, admin: Api, controllers: object, namespace: str
) -> None:
    port = random.randint(31000, 32700)
    admin.create(
        PROXYSERVICE_PLURAL, proxy_service("first", type_="NodePort", node_port=port), namespace
    )
    wait_for(
        lambda: (
            (condition(service_of(admin, namespace, "first"), "Allocated") or {}).get("status")
            == "True"
        ),
        timeout=30,
        message="first service allocated",
        diagnose=lambda: cluster.diagnose("proxyservice", "first", namespace),
    )
    admin.create(
        PROXYSERVICE_PLURAL, proxy_service("second", type_="NodePort", node_port=port), namespace
    )
    refused = wait_for(
        lambda: (
            (c := condition(service_of(admin, namespace, "second"), "Allocated"))
            and c["status"] == "False"
            and c
        ),
        timeout=30,
        message="second service refused",
        diagnose=lambda: cluster.diagnose("proxyservice", "second", namespace),
    )
    assert refused["reason"] == "NodePortConflict"
    assert (
        f"nodePort {port} is already allocated to ProxyService {namespace}/first"
        in (refused["message"])
    )
    # Once the holder is gone, the requested port is granted.
    admin.delete(PROXYSERVICE_PLURAL, "first", namespace)
    wait_for(
        lambda: (
            (condition(service_of(admin, namespace, "second"), "Allocated") or {}).get("status")
            == "True"
        ),
        timeout=30,
        message="second service allocated after all",
        diagnose=lambda: cluster.diagnose("proxyservice", "second", namespace),
    )


def test_node_ports_are_allocated_when_not_requested(
    admin: Api, controllers: object, namespace: str
) -> None:
    admin.create(PROXYSERVICE_PLURAL, proxy_service("np", type_="NodePort"), namespace)
    spec = wait_for(
        lambda: (
            (s := service_of(admin, namespace, "np")["spec"])["ports"][0].get("nodePort")
            and s.get("clusterIP")
            and s
        ),
        timeout=30,
        message="nodePort allocated",
    )
    assert 30000 <= spec["ports"][0]["nodePort"] <= 32767


def endpoints(admin: Api, namespace: str, name: str) -> list[dict[str, object]]:
    return list((service_of(admin, namespace, name).get("status") or {}).get("endpoints") or [])


def readiness_to_endpoints(
    admin: Api, namespace: str, instance: str, *, ready: bool, expect: list[object]
) -> float:
    """Seconds from the Instance's Ready condition changing (as seen by polling it) to the
    service's endpoints listing exactly ``expect``; both polled every 20 ms."""
    changed_at = listed_at = None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (changed_at is None or listed_at is None):
        now = time.monotonic()
        if changed_at is None:
            item = admin.get(INSTANCE_PLURAL, instance, namespace)
            if item is not None and is_ready(item) == ready:
                changed_at = now
        if listed_at is None and sorted(
            str(e["instance"]) for e in endpoints(admin, namespace, "web")
        ) == sorted(str(e) for e in expect):
            listed_at = now
        time.sleep(0.02)
    assert changed_at is not None and listed_at is not None, (changed_at, listed_at)
    return max(0.0, listed_at - changed_at)


def test_endpoints_follow_instance_readiness_within_a_second(
    cluster: TestCluster, admin: Api, fake_nodes: FakeNodes, namespace: str
) -> None:
    node = fake_nodes.add()
    admin.create(
        WORKLOAD_PLURAL, workload("web", replicas=2, node_selector=fake_nodes.selector), namespace
    )
    admin.create(PROXYSERVICE_PLURAL, proxy_service("web", selector={"app": "web"}), namespace)
    wait_available(admin, namespace, "web", 2)
    listed = wait_for(
        lambda: len(eps := endpoints(admin, namespace, "web")) == 2 and eps,
        timeout=10,
        message="two endpoints",
        diagnose=lambda: cluster.diagnose("proxyservice", "web", namespace),
    )
    by_instance = {i["metadata"]["name"]: i for i in instances_of(admin, namespace, "web")}
    for endpoint in listed:
        instance = by_instance[str(endpoint["instance"])]
        assert endpoint["ip"] == instance["status"]["instanceIP"]
        assert endpoint["nodeName"] == node and endpoint["ready"] is True
        # The named targetPort "http" resolved to the container's port.
        assert endpoint["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    status = service_of(admin, namespace, "web")["status"]
    assert status["endpointsSummary"].count(":8080") == 2

    victim = str(listed[0]["instance"])
    others = [e["instance"] for e in listed[1:]]
    fake_nodes.unready.add(victim)
    lag = readiness_to_endpoints(admin, namespace, victim, ready=False, expect=others)
    assert lag < 1.0, f"endpoints followed after {lag:.2f}s"

    fake_nodes.unready.discard(victim)
    lag = readiness_to_endpoints(
        admin, namespace, victim, ready=True, expect=sorted([victim, *others])
    )
    assert lag < 1.0, f"endpoints followed after {lag:.2f}s"


def test_a_service_without_selector_keeps_its_endpoints_and_gets_an_ip(
    admin: Api, controllers: object, namespace: str
) -> None:
    admin.create(PROXYSERVICE_PLURAL, proxy_service("manual"), namespace)
    spec = wait_for(
        lambda: service_of(admin, namespace, "manual")["spec"].get("clusterIP"),
        timeout=30,
        message="clusterIP allocated",
    )
    assert ipaddress.IPv4Address(spec) in SERVICE_RANGE
    assert endpoints(admin, namespace, "manual") == []
