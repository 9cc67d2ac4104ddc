"""The netfilter modes against the real tools in a namespace: what lands in the kernel,
restart without a gap, canary repair of an external flush, and cleanup of ours only."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from proxy_netns import (
    ENDPOINTS,
    NODE_ADDRESSES,
    Topology,
    node_agent,
    proxy_service,
    saved_rules,
    topology,
)

from kopflet.agent.proxy.chain_names import (
    ROUTE_PROTOCOL,
    endpoint_chain,
    service_chain,
)
from kopflet.agent.proxy.cleanup import cleanup_all
from kopflet.agent.proxy.commands import CommandRunner
from kopflet.agent.proxy.conversion import service_ports_from_object
from kopflet.agent.proxy.iptables_proxier import IptablesProxier
from kopflet.agent.proxy.model import EndpointInfo, ServicePortInfo, ServicePortName
from kopflet.agent.proxy.netfilter_backend import (
    IptablesBackend,
    NftablesBackend,
    detect_iptables_variant,
)
from kopflet.agent.proxy.nftables_proxier import NftablesProxier
from kopflet.agent.proxy.proxier import ProxyState

pytestmark = pytest.mark.integration

VIP = "10.96.0.10"
WEB = ServicePortName("default", "web", "p")
E1 = EndpointInfo(ENDPOINTS["e1"][1], 8080)
E3 = EndpointInfo(ENDPOINTS["e3"][1], 8080)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Topology]:
    with topology(tmp_path) as topo:
        yield topo


def state(*endpoints: str) -> ProxyState:
    service = proxy_service("web", cluster_ip=VIP, endpoints=list(endpoints), node_port=30080)
    return ProxyState(
        service_ports=service_ports_from_object(service),
        instance_cidrs=("10.244.1.0/24", "10.244.2.0/24"),
    )


def test_iptables_rules_land_once_and_a_partial_sync_rewrites_only_the_changed_chains(
    net: Topology,
) -> None:
    runner = CommandRunner(netns=net.ns("n1"))
    proxier = IptablesProxier(IptablesBackend(variant="nft", runner=runner))
    proxier.sync_blocking(state("e1", "e2", "e3"), changed=set(), full=True)
    proxier.sync_blocking(state("e1", "e2", "e3"), changed=set(), full=True)
    saved = net.in_ns("n1", "iptables-nft-save", "-t", "nat")
    svc = service_chain(WEB, "TCP")
    assert saved.count('-A PREROUTING -m comment --comment "kopflet service portals"') == 1
    assert any(
        line.startswith("-A KOPFLET-NODEPORTS ") and "--dport 30080" in line and line.endswith(svc)
        for line in saved.splitlines()
    )
    assert "DNAT --to-destination 10.244.2.3:8080" in saved
    assert saved.count(f"-j {svc}") == 2  # the cluster IP and the node port
    # e3 leaves: only the service's chains are rewritten, e3's chain is deleted.
    proxier.sync_blocking(state("e1", "e2"), changed={WEB}, full=False)
    saved = net.in_ns("n1", "iptables-nft-save", "-t", "nat")
    assert f":{endpoint_chain(WEB, 'TCP', E3)} " not in saved
    assert "10.244.2.3" not in saved
    assert net.connect("c1", VIP, 80, count=20).count("e1") > 0


def test_nftables_table_holds_map_entries_and_a_partial_sync_deletes_the_gone_endpoint(
    net: Topology,
) -> None:
    runner = CommandRunner(netns=net.ns("n1"))
    proxier = NftablesProxier(NftablesBackend(runner))
    proxier.sync_blocking(state("e1", "e2", "e3"), changed=set(), full=True)
    proxier.sync_blocking(state("e1", "e2", "e3"), changed=set(), full=True)
    listing = net.in_ns("n1", "nft", "list", "table", "ip", "kopflet")
    assert "10.96.0.10 . tcp . 80 : goto pick-tcp-3" in listing
    assert "tcp . 30080 : goto nodeport-pick-tcp-3" in listing
    assert "numgen random mod 3 map @service-endpoints-tcp-g0" in listing
    assert f"10.96.0.10 . 80 . 2 : {E3.ip} . 8080" in listing
    proxier.sync_blocking(state("e1"), changed={WEB}, full=False)
    listing = net.in_ns("n1", "nft", "list", "table", "ip", "kopflet")
    assert "chain pick-tcp-3 " not in listing and "chain nodeport-pick-tcp-3 " not in listing
    assert "10.96.0.10 . tcp . 80 : goto pick-tcp-1" in listing
    assert E3.ip not in listing
    assert set(net.connect("c1", VIP, 80, count=10)) == {"e1"}


def _nft_table(net: Topology, node: str) -> list[str]:
    """Our table as the kernel holds it, comparable across namespaces: objects sorted,
    handles dropped, rules in their chain's order, elements sorted."""
    listing = json.loads(net.in_ns(node, "nft", "-j", "list", "table", "ip", "kopflet"))
    objects: list[str] = []
    for item in listing["nftables"]:
        for kind, body in item.items():
            if kind == "metainfo":
                continue
            body = {k: v for k, v in body.items() if k != "handle"}
            if "elem" in body:
                body["elem"] = sorted(json.dumps(e, sort_keys=True) for e in body["elem"])
            objects.append(json.dumps([kind, body], sort_keys=True))
    rules = [o for o in objects if o.startswith('["rule"')]
    # Chains are listed in the order they were made; rules keep their order per chain.
    rules.sort(key=lambda r: str(json.loads(r)[1]["chain"]))
    return sorted(o for o in objects if not o.startswith('["rule"')) + rules


def test_nftables_partial_syncs_leave_the_kernel_as_a_full_sync_of_the_final_state(
    net: Topology,
) -> None:
    rnd = random.Random(8)
    names = [ServicePortName("ns", f"svc-{i}") for i in range(8)]

    def info(i: int) -> ServicePortInfo:
        endpoints = tuple(
            sorted(
                EndpointInfo(f"10.244.{j}.{i + 1}", 8080)
                for j in rnd.sample(range(5), rnd.randint(0, 3))
            )
        )
        return ServicePortInfo(
            cluster_ip=f"10.96.0.{100 + i if endpoints else i // 2}",
            port=80 if endpoints else 53,
            protocol=rnd.choice(["TCP", "UDP"]),
            endpoints=endpoints,
            node_port=rnd.choice([None, 30000 + i]),
            affinity_timeout=rnd.choice([None, 60]),
        )

    ports = {n: info(i) for i, n in enumerate(names)}
    proxier = NftablesProxier(NftablesBackend(CommandRunner(netns=net.ns("n1"))))
    proxier.sync_blocking(ProxyState(service_ports=ports), changed=set(), full=True)
    for _ in range(12):
        changed = set(rnd.sample(names, 2))
        for name in changed:
            if rnd.random() < 0.25:
                ports.pop(name, None)
            else:
                ports[name] = info(names.index(name))
        cidrs = tuple(sorted(rnd.sample(["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"], 2)))
        outcome = proxier.sync_blocking(
            ProxyState(service_ports=dict(ports), instance_cidrs=cidrs), changed=changed, full=False
        )
        assert not outcome.full
    fresh = NftablesProxier(NftablesBackend(CommandRunner(netns=net.ns("n2"))))
    fresh.sync_blocking(
        ProxyState(service_ports=dict(ports), instance_cidrs=cidrs), changed=set(), full=True
    )
    assert _nft_table(net, "n1") == _nft_table(net, "n2")


def test_nftables_first_sync_in_pieces_leaves_the_kernel_as_one_transaction_does(
    net: Topology,
) -> None:
    ports = {
        ServicePortName("bulk", f"s{i}"): ServicePortInfo(
            cluster_ip=f"10.96.1.{i + 1}",
            port=80,
            protocol="UDP" if i % 5 == 0 else "TCP",
            endpoints=tuple(EndpointInfo(f"10.{64 + j}.1.{i + 1}", 8080) for j in range(3)),
            node_port=30000 + i if i % 2 else None,
        )
        for i in range(200)
    }
    state = ProxyState(service_ports=ports, instance_cidrs=("10.244.1.0/24",))
    in_pieces: list[str] = []

    class Counting(CommandRunner):
        def run(self, args, *, stdin=None, check=True, timeout=None):  # type: ignore[no-untyped-def]
            if stdin is not None:
                in_pieces.append(stdin)
            return super().run(args, stdin=stdin, check=check, timeout=timeout)

    runner = Counting(netns=net.ns("n1"))
    proxier = NftablesProxier(NftablesBackend(runner), fill_transactions=3, fill_min_entries=200)
    proxier.sync_blocking(state, changed=set(), full=True)
    assert len(in_pieces) == 4  # 600 + 300 endpoint entries, 600 hairpin ones: 3 fills
    whole = NftablesProxier(NftablesBackend(CommandRunner(netns=net.ns("n2"))), fill_transactions=1)
    whole.sync_blocking(state, changed=set(), full=True)
    assert _nft_table(net, "n1") == _nft_table(net, "n2")
    # A full sync of the table that is there fills generation 1, then switches to it.
    proxier.sync_blocking(state, changed=set(), full=True)
    assert len(in_pieces) == 8
    listing = net.in_ns("n1", "nft", "-t", "list", "table", "ip", "kopflet")
    assert "service-endpoints-tcp-g1" in listing and "-g0" not in listing

    def any_generation(node: str) -> list[str]:
        return sorted(re.sub(r"-g\d+\b", "-g*", o) for o in _nft_table(net, node))

    assert any_generation("n1") == any_generation("n2")
    # Traffic takes the new maps: every endpoint answers through the virtual IP.
    assert "numgen random mod 3 map @service-endpoints-tcp-g1" in net.in_ns(
        "n1", "nft", "list", "chain", "ip", "kopflet", "pick-tcp-3"
    )


def _netfilter_without_counters(net: Topology, node: str) -> dict[str, str]:
    rules = saved_rules(net, node)
    return {k: rules[k] for k in ("iptables-nft", "nft")}


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_an_agent_restart_keeps_every_connection_working_and_takes_the_rules_over(
    net: Topology, mode: str
) -> None:
    services = [proxy_service("web", cluster_ip=VIP, endpoints=["e1", "e2", "e3"])]
    drivers = {}
    for node in ("n1", "n2"):
        net.forward_policy_drop(node)
        drivers[node] = net.start_driver(node, mode)
        net.feed(drivers[node], services)
        drivers[node].wait_synced(1)
    before = _netfilter_without_counters(net, "n1")
    client = net.connect_in_background("c1", VIP, 80, count=150, delay=0.02)
    time.sleep(0.5)
    drivers["n1"].kill()  # crash: no cleanup, no goodbye
    time.sleep(0.5)
    restarted = net.start_driver("n1", mode)
    net.feed(restarted, services)
    restarted.wait_synced(1)
    out, _ = client.communicate(timeout=60)
    answers = json.loads(out)
    assert len(answers) == 150 and set(answers) <= {"e1", "e2", "e3"}, answers
    assert _netfilter_without_counters(net, "n1") == before


@pytest.mark.parametrize(
    ("mode", "flush"),
    [
        ("iptables", [["iptables-nft", "-t", "nat", "-F"], ["iptables-nft", "-t", "nat", "-X"]]),
        ("nftables", [["nft", "flush", "table", "ip", "kopflet"]]),
    ],
)
def test_an_external_flush_is_repaired_within_the_resync_period(
    net: Topology, mode: str, flush: list[list[str]]
) -> None:
    services = [proxy_service("web", cluster_ip=VIP, endpoints=["e1"])]
    driver = net.start_driver("n1", mode)  # default policy: 1 s, 30 s, canary every 5 s
    net.feed(driver, services)
    driver.wait_synced(1)
    assert net.connect("c1", VIP, 80) == ["e1"]
    for command in flush:
        net.in_ns("n1", *command)
    flushed = time.monotonic()
    assert net.connect("c1", VIP, 80) != ["e1"]
    driver.wait_synced(2, timeout=30)
    repaired = time.monotonic() - flushed
    assert repaired < 30
    assert net.connect("c1", VIP, 80, count=5) == ["e1"] * 5


def test_cleanup_removes_everything_of_ours_in_every_mode_and_nothing_else(net: Topology) -> None:
    # Someone else's rules, in both tables, in an nft table and in the route table.
    for args in (
        ["iptables-nft", "-t", "nat", "-N", "DOCKER"],
        ["iptables-nft", "-t", "nat", "-A", "PREROUTING", "-m", "addrtype", "--dst-type",
         "LOCAL", "-j", "DOCKER"],
        ["iptables-nft", "-t", "filter", "-N", "DOCKER-USER"],
        ["iptables-nft", "-t", "filter", "-A", "FORWARD", "-j", "DOCKER-USER"],
        ["iptables-nft", "-P", "FORWARD", "DROP"],
        ["nft", "add table inet someone; add chain inet someone c; add rule inet someone c accept"],
        ["ip", "route", "add", "10.99.0.0/16", "via", "172.30.0.1"],
    ):  # fmt: skip
        net.in_ns("n1", *args)
    before = saved_rules(net, "n1")
    services = [
        # Only an endpoint on n1: no agent runs on n2 to route replies back.
        proxy_service("web", cluster_ip=VIP, endpoints=["e1"], node_port=30080),
        proxy_service("empty", cluster_ip="10.96.0.11", endpoints=[]),
    ]
    ours = {
        "iptables": ("iptables-nft", "KOPFLET-SERVICES"),
        "nftables": ("nft", "table ip kopflet"),
        "userspace": ("links", "kopflet-vip0"),
    }
    runner = CommandRunner(netns=net.ns("n1"))
    for mode in ("iptables", "nftables", "userspace"):
        driver = net.start_driver("n1", mode)
        net.feed(driver, services)
        driver.wait_synced(1)
        assert net.connect("c1", VIP, 80) == ["e1"]
        driver.stop()  # rules stay in place when the agent stops
        during = saved_rules(net, "n1")
        where, what = ours[mode]
        assert what in during[where], (mode, during[where])
        assert f"proto {ROUTE_PROTOCOL}" in during["routes"]
        report = cleanup_all(runner)
        assert report.errors == []
        assert saved_rules(net, "n1") == before, mode
    assert cleanup_all(runner).errors == []  # nothing left: still fine


def test_switching_modes_removes_the_previous_modes_leftovers_after_the_first_sync(
    net: Topology,
) -> None:
    services = [proxy_service("web", cluster_ip=VIP, endpoints=["e1"])]
    leftovers = {
        "iptables": lambda rules: "KOPFLET-SERVICES" in rules["iptables-nft"],
        "nftables": lambda rules: "table ip kopflet" in rules["nft"],
        "userspace": lambda rules: "kopflet-vip0" in rules["links"],
    }
    previous = None
    for mode in ("iptables", "nftables", "userspace", "iptables"):
        driver = net.start_driver("n1", mode)
        net.feed(driver, services)
        driver.wait_synced(1)
        if mode == "userspace" and previous is not None:
            # Removed before the relays listen: the old DNAT rules would take connections
            # from them, and those die once no NAT chain is left to translate replies.
            assert not leftovers[previous](saved_rules(net, "n1"))
        # Connections made while the previous mode's leftovers are removed: none is cut.
        during = net.connect_in_background("c1", VIP, 80, count=40, delay=0.01)
        deadline = time.monotonic() + 10
        while previous is not None and leftovers[previous](saved_rules(net, "n1")):
            assert time.monotonic() < deadline, f"{previous} leftovers remain in {mode} mode"
            time.sleep(0.1)
        out, _ = during.communicate(timeout=60)
        assert json.loads(out) == ["e1"] * 40, (previous, mode, out)
        assert net.connect("c1", VIP, 80) == ["e1"], mode
        assert leftovers[mode](saved_rules(net, "n1"))
        driver.stop()
        previous = mode


def test_iptables_variant_follows_the_one_holding_dockers_chains(net: Topology) -> None:
    runner = CommandRunner(netns=net.ns("n2"))
    assert detect_iptables_variant(runner) == "nft"
    net.in_ns("n2", "iptables-legacy", "-t", "filter", "-N", "DOCKER")
    assert detect_iptables_variant(runner) == "legacy"


def test_host_subnet_routes_follow_node_agents(net: Topology) -> None:
    from prometheus_client import CollectorRegistry

    from kopflet.agent.proxy.engine import ProxyEngine
    from kopflet.agent.proxy.metrics import ProxyMetrics

    engine = ProxyEngine(
        node_name="n1",
        mode="iptables",
        runner=CommandRunner(netns=net.ns("n1")),
        metrics=ProxyMetrics(CollectorRegistry()),
    )
    for node in NODE_ADDRESSES:
        engine.on_node(None, node_agent(node))
    engine.mark_initial_lists_complete()
    assert asyncio.run(engine.sync_now())
    routes = net.in_ns("n1", "ip", "route", "show", "proto", str(ROUTE_PROTOCOL))
    assert routes.split() == ["10.244.2.0/24", "via", "172.30.0.12", "dev", "eth0"]
    moved = node_agent("n2")
    moved["spec"]["instanceCIDR"] = "10.244.7.0/24"
    engine.on_node(node_agent("n2"), moved)
    assert asyncio.run(engine.sync_now())
    routes = net.in_ns("n1", "ip", "route", "show", "proto", str(ROUTE_PROTOCOL))
    assert routes.split() == ["10.244.7.0/24", "via", "172.30.0.12", "dev", "eth0"]
    engine.on_node(moved, None)
    assert asyncio.run(engine.sync_now())
    assert net.in_ns("n1", "ip", "route", "show", "proto", str(ROUTE_PROTOCOL)) == ""
