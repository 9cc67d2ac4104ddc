"""ProxyEngine as the agent drives it, on an in-memory iptables."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from kopflet.agent.proxy.chain_names import service_chain
from kopflet.agent.proxy.clock import FakeClock
from kopflet.agent.proxy.engine import ProxyEngine
from kopflet.agent.proxy.fake_backend import FakeIptablesBackend
from kopflet.agent.proxy.metrics import ProxyMetrics
from kopflet.agent.proxy.model import ServicePortName

pytestmark = pytest.mark.unit

WEB = ServicePortName("default", "web", "http")


def service(*ips: str, cluster_ip: str = "10.96.0.10") -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "clusterIP": cluster_ip,
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
        },
        "status": {"endpoints": [{"ip": ip, "ready": True} for ip in ips]},
    }


def engine(backend: FakeIptablesBackend) -> ProxyEngine:
    return ProxyEngine(
        node_name="node-a",
        backend=backend,
        clock=FakeClock(),
        metrics=ProxyMetrics(CollectorRegistry()),
        host_routes=False,
        conntrack=False,
    )


def test_nothing_syncs_before_the_initial_lists_and_everything_after() -> None:
    backend = FakeIptablesBackend()
    proxy = engine(backend)
    proxy.on_service(None, service("10.244.1.2"))
    assert not asyncio.run(proxy.sync_now())
    assert backend.restored == []
    proxy.mark_initial_lists_complete()
    assert asyncio.run(proxy.sync_now())
    assert len(backend.rules("nat", service_chain(WEB, "TCP"))) == 1
    assert proxy.last_successful_sync is not None


def test_a_deleted_service_loses_its_chains() -> None:
    backend = FakeIptablesBackend()
    proxy = engine(backend)
    proxy.on_service(None, service("10.244.1.2"))
    proxy.mark_initial_lists_complete()
    asyncio.run(proxy.sync_now())
    proxy.on_service(service("10.244.1.2"), None)
    asyncio.run(proxy.sync_now())
    assert service_chain(WEB, "TCP") not in backend.tables["nat"]
    assert not any("10.96.0.10" in r for r in backend.rules("nat", "KOPFLET-SERVICES"))


def test_a_malformed_update_keeps_the_last_good_rules() -> None:
    backend = FakeIptablesBackend()
    proxy = engine(backend)
    proxy.on_service(None, service("10.244.1.2"))
    proxy.mark_initial_lists_complete()
    asyncio.run(proxy.sync_now())
    broken = service("10.244.1.3")
    broken["spec"]["ports"] = "eighty"
    proxy.on_service(service("10.244.1.2"), broken)
    assert not proxy.syncer.services.has_pending
    assert any("10.244.1.2:8080" in r for rules in backend.tables["nat"].values() for r in rules)


def test_an_event_that_changes_nothing_requests_no_sync() -> None:
    proxy = engine(FakeIptablesBackend())
    proxy.on_service(None, service("10.244.1.2"))
    proxy.mark_initial_lists_complete()
    asyncio.run(proxy.sync_now())
    proxy.syncer.schedule.requested = False
    proxy.on_service(service("10.244.1.2"), service("10.244.1.2"))
    assert not proxy.syncer.schedule.requested


def test_a_forward_rule_put_first_by_docker_is_moved_back_on_request() -> None:
    backend = FakeIptablesBackend()
    proxy = engine(backend)
    proxy.on_service(None, service())  # no endpoints: our REJECT must see new connections
    proxy.mark_initial_lists_complete()
    asyncio.run(proxy.sync_now())
    # The runtime made the instance network: Docker put its ACCEPT ahead of our hook.
    backend.restore("*filter\n-I FORWARD 1 -i kopflet0 ! -o kopflet0 -j ACCEPT\nCOMMIT\n")
    proxy.request_full_sync()
    assert proxy.syncer.schedule.full_due(0.0)
    asyncio.run(proxy.sync_now())
    forward = backend.rules("filter", "FORWARD")
    assert forward[0].endswith("-j KOPFLET-FORWARD") and len(forward) == 2


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown proxy mode"):
        ProxyEngine(node_name="n", mode="ipvs", metrics=ProxyMetrics(CollectorRegistry()))  # type: ignore[arg-type]
