"""The sync loop with an in-memory iptables and a fake clock: rate limit, full vs partial,
failure -> full, canary, nothing before the initial lists, conntrack and routes after."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from kopflet.agent.proxy.chain_names import endpoint_chain, service_chain
from kopflet.agent.proxy.clock import FakeClock
from kopflet.agent.proxy.conntrack import ConntrackFlush
from kopflet.agent.proxy.fake_backend import FakeIptablesBackend
from kopflet.agent.proxy.iptables_proxier import IptablesProxier
from kopflet.agent.proxy.metrics import ProxyMetrics
from kopflet.agent.proxy.model import (
    EndpointInfo,
    NodeName,
    NodeRoute,
    ServicePortInfo,
    ServicePortName,
)
from kopflet.agent.proxy.sync_schedule import SyncPolicy, SyncSchedule
from kopflet.agent.proxy.syncer import ProxySyncer

pytestmark = pytest.mark.unit

WEB = ServicePortName("default", "web", "http")
DNS = ServicePortName("default", "dns", "dns")
E1 = EndpointInfo("10.244.1.2", 8080)
E2 = EndpointInfo("10.244.2.2", 8080)


def web(*endpoints: EndpointInfo) -> ServicePortInfo:
    return ServicePortInfo(cluster_ip="10.96.0.10", port=80, protocol="TCP", endpoints=endpoints)


def dns(*endpoints: EndpointInfo) -> ServicePortInfo:
    return ServicePortInfo(cluster_ip="10.96.0.53", port=53, protocol="UDP", endpoints=endpoints)


class FakeRoutes:
    def __init__(self) -> None:
        self.calls: list[list[NodeRoute]] = []

    def sync(self, nodes: Iterable[NodeRoute], *, own_node: NodeName) -> Sequence[Exception]:
        self.calls.append(sorted(n for n in nodes if n.node_name != own_node))
        return []


class Harness:
    def __init__(
        self, backend: FakeIptablesBackend | None = None, **hooks: Callable[[], object]
    ) -> None:
        self.backend = backend or FakeIptablesBackend()
        self.clock = FakeClock()
        self.routes = FakeRoutes()
        self.flushes: list[list[ConntrackFlush]] = []
        self.registry = CollectorRegistry()
        self.metrics = ProxyMetrics(self.registry)
        self.syncer = ProxySyncer(
            proxier=IptablesProxier(self.backend),
            node_name=NodeName("node-a"),
            clock=self.clock,
            policy=SyncPolicy(min_interval=1.0, full_period=30.0, canary_interval=5.0),
            metrics=self.metrics,
            routes=self.routes,
            conntrack=self._flush,
            **hooks,
        )

    def _flush(self, flushes: Sequence[ConntrackFlush]) -> Sequence[Exception]:
        self.flushes.append(list(flushes))
        return []

    def set_service(self, name: ServicePortName, info: ServicePortInfo | None) -> None:
        self.syncer.services.update_service(name.service, {name: info} if info else {})
        self.syncer.request_sync()

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def run(self, passes: int) -> None:
        asyncio.run(self.syncer.run(max_passes=passes))

    def nat(self, chain: str) -> list[str]:
        return self.backend.rules("nat", chain)


def test_nothing_is_programmed_before_the_initial_lists_are_complete() -> None:
    h = Harness()
    h.set_service(WEB, web(E1))

    async def scenario() -> None:
        loop = asyncio.create_task(h.syncer.run(max_passes=3))
        await asyncio.sleep(0.05)
        assert h.backend.restored == [] and h.routes.calls == []
        h.syncer.mark_initial_lists_complete()
        await asyncio.wait_for(loop, 5)

    asyncio.run(scenario())
    assert h.clock.waits[0] is None  # it waited for the lists, with no timer
    assert len(h.backend.restored) == 1
    assert h.nat(service_chain(WEB, "TCP"))


def test_first_sync_is_full_and_installs_hooks_and_chains() -> None:
    h = Harness()
    h.set_service(WEB, web(E1, E2))
    h.syncer.mark_initial_lists_complete()
    h.run(1)
    assert h.backend.save_calls == 2  # nat and filter read to find hooks and stale chains
    assert any("-j KOPFLET-SERVICES" in r for r in h.backend.rules("nat", "PREROUTING"))
    assert any("-j KOPFLET-SERVICES" in r for r in h.backend.rules("nat", "OUTPUT"))
    assert any("-j KOPFLET-POSTROUTING" in r for r in h.backend.rules("nat", "POSTROUTING"))
    assert len(h.nat(service_chain(WEB, "TCP"))) == 2
    assert h.syncer.last_success_time is not None
    assert (
        h.metric("kopflet_proxy_last_sync_success_timestamp_seconds") == h.syncer.last_success_time
    )
    assert h.metric("kopflet_proxy_sync_duration_seconds_count", kind="full") == 1
    assert h.metric("kopflet_proxy_rules_programmed") == h.backend.save("nat").count(
        "\n-A "
    ) + h.backend.save("filter").count("\n-A ")


def test_syncs_are_rate_limited_to_one_per_min_interval() -> None:
    h = Harness()
    h.set_service(WEB, web(E1))
    h.syncer.mark_initial_lists_complete()
    h.run(1)
    h.set_service(WEB, web(E1, E2))
    h.set_service(DNS, dns(E1))  # coalesces with the previous request
    h.run(2)
    assert h.clock.waits == [1.0]
    assert len(h.backend.restored) == 2


def test_a_change_arriving_while_a_sync_runs_gets_a_sync_of_its_own() -> None:
    h = Harness()
    h.set_service(WEB, web())  # created: the controller has not filled its endpoints yet
    h.syncer.mark_initial_lists_complete()
    proxier = h.syncer.proxier
    real_sync = proxier.sync

    async def sync_meanwhile_updated(*args: Any, **kwargs: Any) -> Any:
        # The endpoints arrive from the watch while the first sync is being applied.
        h.set_service(WEB, web(E1, E2))
        return await real_sync(*args, **kwargs)

    proxier.sync = sync_meanwhile_updated  # type: ignore[method-assign]
    h.run(1)
    proxier.sync = real_sync  # type: ignore[method-assign]
    h.run(2)
    # The next sync comes after the rate limit, not after the 30 s full resync.
    assert h.clock.waits == [1.0]
    assert len(h.nat(service_chain(WEB, "TCP"))) == 2


def test_a_change_syncs_partially_and_leaves_the_same_rules_as_a_full_sync() -> None:
    h = Harness()
    h.set_service(WEB, web(E1))
    h.set_service(DNS, dns(E1))
    h.syncer.mark_initial_lists_complete()
    h.run(1)
    h.set_service(WEB, web(E1, E2))
    h.clock.advance(2)
    h.run(1)
    partial = h.backend.restored[-1]
    assert h.backend.save_calls == 2  # no iptables-save on a partial sync
    assert f":{service_chain(DNS, 'UDP')} " not in partial  # unchanged: not rewritten
    assert f":{service_chain(WEB, 'TCP')} " in partial
    fresh = Harness()
    fresh.set_service(WEB, web(E1, E2))
    fresh.set_service(DNS, dns(E1))
    fresh.syncer.mark_initial_lists_complete()
    fresh.run(1)
    assert h.backend.tables == fresh.backend.tables


def test_removed_endpoint_chain_is_deleted_by_a_partial_sync() -> None:
    h = Harness()
    h.set_service(WEB, web(E1, E2))
    h.syncer.mark_initial_lists_complete()
    h.run(1)
    gone = endpoint_chain(WEB, "TCP", E2)
    assert gone in h.backend.tables["nat"]
    h.set_service(WEB, web(E1))
    h.clock.advance(2)
    h.run(1)
    assert gone not in h.backend.tables["nat"]
    assert f"-X {gone}" in h.backend.restored[-1]


def test_a_failed_sync_makes_the_next_one_full_after_a_back_off() -> None:
    h = Harness()
    h.set_service(WEB, web(E1))
    h.syncer.mark_initial_lists_complete()
    h.run(1)
    h.backend.fail_restores = 2
    h.set_service(WEB, web(E1, E2))
    h.clock.advance(2)
    h.run(1)  # fails
    assert h.syncer.schedule.needs_full
    h.run(2)  # waits 1 s, fails again
    h.run(2)  # waits 2 s (back-off), succeeds with a full sync
    assert h.clock.waits == [1.0, 2.0]
    assert h.backend.save_calls == 2 + 0 + 2 + 2  # the failed partial sync read nothing
    assert not h.syncer.schedule.needs_full
    assert len(h.nat(service_chain(WEB, "TCP"))) == 2
    assert h.metric("kopflet_proxy_sync_failures_total", kind="partial") == 1
    assert h.metric("kopflet_proxy_sync_failures_total", kind="full") == 1


def test_leftover_hooks_run_once_around_the_first_sync_and_a_failing_one_stops_nothing() -> None:
    seen: list[str] = []

    def before() -> None:
        seen.append(f"before, {len(h.backend.restored)} restores")
        raise RuntimeError("nft is gone")

    def after() -> None:
        seen.append(f"after, {len(h.backend.restored)} restores")

    h = Harness(before_first_sync=before, after_first_sync=after)
    h.backend.fail_restores = 1
    h.set_service(WEB, web(E1))
    h.syncer.mark_initial_lists_complete()
    h.run(1)  # fails: the hook after waits for a sync that succeeded
    assert seen == ["before, 0 restores"]
    h.run(2)  # the back-off, then a full sync that succeeds
    restores = len(h.backend.restored)
    assert seen == ["before, 0 restores", f"after, {restores} restores"]
    h.set_service(WEB, web(E1, E2))
    h.clock.advance(2)
    h.run(1)
    assert len(h.backend.restored) > restores
    assert seen == ["before, 0 restores", f"after, {restores} restores"]
    assert len(h.nat(service_chain(WEB, "TCP"))) == 2


def test_a_full_resync_runs_every_full_period_without_changes() -> None:
    h = Harness()
    h.set_service(WEB, web(E1))
    h.syncer.mark_initial_lists_complete()
    h.run(1)
    h.syncer.schedule.policy = SyncPolicy(min_interval=1.0, full_period=30.0, canary_interval=60)
    h.run(2)
    assert h.clock.waits == [30.0]
    assert h.backend.save_calls == 4


def test_an_external_flush_is_seen_by_the_canary_and_repaired_by_a_full_sync() -> None:
    h = Harness()
    h.set_service(WEB, web(E1))
    h.syncer.mark_initial_lists_complete()
    h.run(1)
    before = {t: dict(c) for t, c in h.backend.tables.items()}
    h.run(2)  # waits 5 s, canary intact
    assert h.clock.waits == [5.0] and len(h.backend.restored) == 1
    h.backend.flush_table("nat")
    h.run(2)  # waits 5 s, canary broken -> full sync requested
    h.run(1)  # full sync, at once: the last sync was long enough ago
    assert h.clock.waits == [5.0, 5.0]
    assert h.backend.tables == before
    assert h.metric("kopflet_proxy_canary_repairs_total") == 1


def test_a_rule_put_ahead_of_our_forward_hook_is_seen_and_the_hook_moved_back_to_the_top() -> None:
    h = Harness()
    h.set_service(WEB, web())  # no endpoints: only our REJECT stops a new connection
    h.syncer.mark_initial_lists_complete()
    h.run(1)
    # Docker creating its network inserts its own rules at the top of FORWARD.
    h.backend.restore(
        "*filter\n:DOCKER-USER - [0:0]\n"
        "-I FORWARD 1 -i kopflet0 ! -o kopflet0 -j ACCEPT\n"
        "-I FORWARD 1 -j DOCKER-USER\nCOMMIT\n"
    )
    h.run(2)  # waits 5 s, canary: our hook is no longer first -> full sync requested
    h.run(1)
    forward = h.backend.rules("filter", "FORWARD")
    assert forward[0].endswith("-j KOPFLET-FORWARD")
    assert sum(r.endswith("-j KOPFLET-FORWARD") for r in forward) == 1
    assert forward[1:] == ["-j DOCKER-USER", "-i kopflet0 ! -o kopflet0 -j ACCEPT"]
    assert h.metric("kopflet_proxy_canary_repairs_total") == 1
    h.run(2)  # in place now: the canary stays quiet
    assert h.metric("kopflet_proxy_canary_repairs_total") == 1


def test_a_restarted_agent_takes_over_its_rules_and_drops_stale_chains_without_duplicates() -> None:
    old = Harness()
    old.set_service(WEB, web(E1, E2))
    old.set_service(DNS, dns(E1))
    old.syncer.mark_initial_lists_complete()
    old.run(1)
    new = Harness(backend=old.backend)  # same node, new process: empty memory
    new.set_service(WEB, web(E1, E2))
    new.syncer.mark_initial_lists_complete()
    new.run(1)
    assert service_chain(DNS, "UDP") not in new.backend.tables["nat"]
    assert len(new.backend.rules("nat", "PREROUTING")) == 1  # hook not inserted twice
    assert "-I " not in new.backend.restored[-1]


def test_removed_udp_endpoints_are_flushed_from_conntrack_after_the_sync() -> None:
    h = Harness()
    h.set_service(DNS, dns(E1, E2))
    h.syncer.mark_initial_lists_complete()
    h.run(1)
    h.set_service(DNS, dns(E1))
    h.clock.advance(2)
    h.run(1)
    assert h.flushes[-1] == [ConntrackFlush(orig_dst="10.96.0.53", dst_nat="10.244.2.2")]


def test_routes_follow_node_changes_and_full_syncs() -> None:
    h = Harness()
    b = NodeRoute(NodeName("node-b"), "10.244.2.0/24", "172.30.0.12")
    a = NodeRoute(NodeName("node-a"), "10.244.1.0/24", "172.30.0.11")
    h.syncer.nodes.update_nodes([(a.node_name, a), (b.node_name, b)])
    h.syncer.mark_initial_lists_complete()
    h.run(1)
    assert h.routes.calls == [[b]]
    h.set_service(WEB, web(E1))
    h.clock.advance(2)
    h.run(1)  # a service change alone doesn't touch routes
    assert len(h.routes.calls) == 1
    # Forwarding for instance subnets, written by the full sync and kept by the partial
    # one (unchanged: not rewritten).
    assert any("-d 10.244.2.0/24" in r for r in h.backend.rules("filter", "KOPFLET-FORWARD"))
    assert "KOPFLET-FORWARD" not in h.backend.restored[-1]


def test_schedule_back_off_is_capped_at_the_full_period() -> None:
    schedule = SyncSchedule(SyncPolicy(min_interval=1.0, full_period=30.0))
    schedule.initial_lists_complete = True
    for _ in range(10):
        schedule.record_sync(100.0, full=True, ok=False)
    assert schedule.next_sync_at() == 130.0
