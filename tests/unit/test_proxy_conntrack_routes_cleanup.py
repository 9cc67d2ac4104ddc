"""Planning of conntrack flushes, host-subnet routes and cleanup: pure functions."""

from __future__ import annotations

import pytest

from kopflet.agent.proxy.change_tracker import Change
from kopflet.agent.proxy.cleanup import builtin_chains_left_empty, render_iptables_cleanup
from kopflet.agent.proxy.conntrack import ConntrackFlush, plan_conntrack_flushes
from kopflet.agent.proxy.fake_backend import FakeIptablesBackend
from kopflet.agent.proxy.host_routes import Route, desired_routes, plan_routes
from kopflet.agent.proxy.iptables_render import render_iptables_ruleset
from kopflet.agent.proxy.model import (
    EndpointInfo,
    NodeName,
    NodeRoute,
    ServicePortInfo,
    ServicePortName,
)

pytestmark = pytest.mark.unit

DNS = ServicePortName("kube", "dns", "dns")
E1, E2 = EndpointInfo("10.244.1.2", 53), EndpointInfo("10.244.2.2", 53)


def udp(*endpoints: EndpointInfo, node_port: int | None = None) -> ServicePortInfo:
    return ServicePortInfo(
        cluster_ip="10.96.0.53", port=53, protocol="UDP", endpoints=endpoints, node_port=node_port
    )


def test_removed_udp_endpoint_is_flushed_by_virtual_ip_and_node_port() -> None:
    flushes = plan_conntrack_flushes(
        {DNS: Change(udp(E1, E2, node_port=30053), udp(E1, node_port=30053))}
    )
    assert flushes == [
        ConntrackFlush(orig_port_dst=30053, dst_nat="10.244.2.2"),
        ConntrackFlush(orig_dst="10.96.0.53", dst_nat="10.244.2.2"),
    ]
    assert flushes[1].argv() == [
        "conntrack", "-D", "-p", "udp", "--orig-dst", "10.96.0.53", "--dst-nat", "10.244.2.2",
    ]  # fmt: skip


def test_udp_service_getting_its_first_endpoint_flushes_entries_to_its_virtual_ip() -> None:
    assert plan_conntrack_flushes({DNS: Change(udp(), udp(E1))}) == [
        ConntrackFlush(orig_dst="10.96.0.53", orig_port_dst=53)
    ]


def test_deleted_udp_service_flushes_all_its_endpoints() -> None:
    assert plan_conntrack_flushes({DNS: Change(udp(E1), None)}) == [
        ConntrackFlush(orig_dst="10.96.0.53", dst_nat="10.244.1.2")
    ]


def test_tcp_changes_flush_nothing() -> None:
    tcp = ServicePortInfo(cluster_ip="10.96.0.1", port=80, protocol="TCP", endpoints=(E1,))
    assert plan_conntrack_flushes({DNS: Change(tcp, None)}) == []


NODE_A = NodeRoute(NodeName("node-a"), "10.244.1.0/24", "172.30.0.11")
NODE_B = NodeRoute(NodeName("node-b"), "10.244.2.0/24", "172.30.0.12")
NODE_C = NodeRoute(NodeName("node-c"), "10.244.3.0/24", "172.30.0.13")


def test_routes_go_to_every_other_node_via_its_address() -> None:
    assert desired_routes([NODE_A, NODE_B, NODE_C], own_node=NodeName("node-a")) == [
        Route("10.244.2.0/24", "172.30.0.12"),
        Route("10.244.3.0/24", "172.30.0.13"),
    ]


def test_route_plan_replaces_changed_and_new_routes_and_deletes_gone_ones() -> None:
    observed = [Route("10.244.2.0/24", "172.30.0.99"), Route("10.244.9.0/24", "172.30.0.19")]
    desired = [Route("10.244.2.0/24", "172.30.0.12"), Route("10.244.3.0/24", "172.30.0.13")]
    plan = plan_routes(desired, observed)
    assert plan.replace == tuple(desired)
    assert plan.delete == (Route("10.244.9.0/24", "172.30.0.19"),)
    assert plan_routes(desired, desired).empty


def test_cleanup_removes_our_chains_and_hooks_and_keeps_everything_else() -> None:
    backend = FakeIptablesBackend()
    backend.restore(
        "*nat\n:DOCKER - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n"
        "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\nCOMMIT\n"
    )
    theirs = {t: backend.save(t) for t in ("nat", "filter")}
    info = ServicePortInfo(cluster_ip="10.96.0.10", port=80, protocol="TCP", endpoints=(E1,))
    backend.restore(render_iptables_ruleset({DNS: info}, instance_cidrs=["10.244.1.0/24"]).text)
    assert theirs != {t: backend.save(t) for t in ("nat", "filter")}
    backend.restore(render_iptables_cleanup({t: backend.save(t) for t in ("nat", "filter")}))
    assert {t: backend.save(t) for t in ("nat", "filter")} == theirs
    assert render_iptables_cleanup(theirs) == ""


def test_cleanup_for_the_nftables_mode_keeps_its_forwarding_chain() -> None:
    backend = FakeIptablesBackend()
    info = ServicePortInfo(cluster_ip="10.96.0.10", port=80, protocol="TCP", endpoints=(E1,))
    backend.restore(render_iptables_ruleset({DNS: info}).text)
    saved = {t: backend.save(t) for t in ("nat", "filter")}
    backend.restore(render_iptables_cleanup(saved, keep={"KOPFLET-FORWARD"}))
    assert set(backend.tables["filter"]) == {"INPUT", "FORWARD", "OUTPUT", "KOPFLET-FORWARD"}
    assert backend.rules("filter", "FORWARD") == [
        '-m comment --comment "kopflet forwarding rules" -j KOPFLET-FORWARD'
    ]
    assert set(backend.tables["nat"]) == {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}


def test_builtin_chains_holding_only_our_hooks_are_the_ones_left_empty() -> None:
    saved = {
        "nat": "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
        ":KOPFLET-SERVICES - [0:0]\n:DOCKER - [0:0]\n"
        "-A PREROUTING -m comment --comment x -j KOPFLET-SERVICES\n"
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n"
        "-A OUTPUT -m comment --comment x -j KOPFLET-SERVICES\nCOMMIT\n",
        "filter": "*filter\n:FORWARD DROP [0:0]\n:KOPFLET-FORWARD - [0:0]\n"
        "-A FORWARD -j KOPFLET-FORWARD\nCOMMIT\n",
    }
    # PREROUTING also holds Docker's rule; FORWARD's policy isn't ours to drop.
    assert builtin_chains_left_empty(saved) == [("nat", "OUTPUT")]
