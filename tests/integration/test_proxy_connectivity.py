"""The same connectivity tests in all three modes, on a two-node namespace network.

An instance (c1) on node n1 reaches a virtual IP load-balanced over endpoints on n1 and
n2; node ports answer on a node's address from outside; no endpoints -> refused at once;
an endpoint leaving rotation, ClientIP affinity, UDP. In the netfilter modes both nodes
have Docker's FORWARD policy of DROP, so host subnetting must let instance traffic through.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from proxy_netns import NODE_ADDRESSES, Topology, proxy_service, topology

pytestmark = pytest.mark.integration

MODES = ["iptables", "nftables", "userspace"]


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Topology]:
    with topology(tmp_path) as topo:
        yield topo


VIP = "10.96.0.10"


def start(net: Topology, mode: str, services: list[dict[str, object]]) -> None:
    """An engine on each node, as an agent would run it, fed the same objects."""
    for node in ("n1", "n2"):
        if mode != "userspace":
            net.forward_policy_drop(node)
        driver = net.start_driver(node, mode)
        net.feed(driver, services)
    for driver in net.drivers:
        driver.wait_synced(1)


@pytest.mark.parametrize("mode", MODES)
def test_virtual_ip_spreads_300_connections_evenly_over_endpoints_on_both_nodes(
    net: Topology, mode: str
) -> None:
    start(net, mode, [proxy_service("web", cluster_ip=VIP, endpoints=["e1", "e2", "e3"])])
    answers = net.connect("c1", VIP, 80, count=300)
    counts = collections.Counter(answers)
    assert set(counts) == {"e1", "e2", "e3"}, counts
    for endpoint in ("e1", "e2", "e3"):
        assert 300 * (1 / 3 - 0.10) <= counts[endpoint] <= 300 * (1 / 3 + 0.10), counts


@pytest.mark.parametrize("mode", MODES)
def test_node_port_on_either_node_reaches_endpoints_on_both_nodes_from_outside(
    net: Topology, mode: str
) -> None:
    service = proxy_service("web", cluster_ip=VIP, endpoints=["e1", "e2", "e3"], node_port=30080)
    start(net, mode, [service])
    for address in NODE_ADDRESSES.values():
        counts = collections.Counter(net.connect("r", address, 30080, count=60))
        assert set(counts) == {"e1", "e2", "e3"}, (address, counts)


@pytest.mark.parametrize("mode", MODES)
def test_service_without_endpoints_is_refused_at_once(net: Topology, mode: str) -> None:
    service = proxy_service("empty", cluster_ip=VIP, endpoints=[], node_port=30081)
    start(net, mode, [service])
    # "refused" is the REJECT's answer at once; a dropped SYN would end in "timeout" after 3 s.
    assert net.connect("c1", VIP, 80, count=3) == ["refused"] * 3
    assert net.connect("r", NODE_ADDRESSES["n1"], 30081) == ["refused"]


@pytest.mark.parametrize("mode", MODES)
def test_client_ip_affinity_sends_one_client_to_one_endpoint(net: Topology, mode: str) -> None:
    service = proxy_service(
        "sticky", cluster_ip=VIP, endpoints=["e1", "e2", "e3"], affinity_timeout=60
    )
    start(net, mode, [service])
    answers = net.connect("c1", VIP, 80, count=30)
    assert len(set(answers)) == 1 and answers[0] in {"e1", "e2", "e3"}, answers


@pytest.mark.parametrize("mode", MODES)
def test_an_endpoint_turning_unready_leaves_rotation_within_2s(net: Topology, mode: str) -> None:
    start(net, mode, [proxy_service("web", cluster_ip=VIP, endpoints=["e1", "e2", "e3"])])
    assert "e3" in net.connect("c1", VIP, 80, count=30)
    # The controller drops the unready instance from status.endpoints.
    before = [len(driver.synced) for driver in net.drivers]
    changed = time.monotonic()
    for driver in net.drivers:
        driver.send({"service": proxy_service("web", cluster_ip=VIP, endpoints=["e1", "e2"])})
    for driver, count in zip(net.drivers, before, strict=True):
        driver.wait_synced(count + 1, timeout=10)
    applied = max(driver.synced[count] for driver, count in zip(net.drivers, before, strict=True))
    # Thirty answers without e3: by chance with e3 still in rotation, (2/3)^30 = 5e-6.
    assert "e3" not in net.connect("c1", VIP, 80, count=30)
    assert applied - changed <= 2.0, f"the rules changed {applied - changed:.2f} s later"


@pytest.mark.parametrize("mode", MODES)
def test_udp_virtual_ip_reaches_endpoints_and_a_removed_one_stops_answering(
    net: Topology, mode: str
) -> None:
    service = proxy_service("dns", cluster_ip=VIP, endpoints=["e1", "e2"], port=53, protocol="UDP")
    start(net, mode, [service])
    # One source port: every datagram belongs to the same conntrack entry / relay session.
    first = net.connect("c1", VIP, 53, proto="udp", src_port=40053, count=3)
    assert len(set(first)) == 1 and first[0] in {"e1", "e2"}, first
    stuck = first[0]
    remaining = "e2" if stuck == "e1" else "e1"
    for driver in net.drivers:
        driver.send(
            {
                "service": proxy_service(
                    "dns", cluster_ip=VIP, endpoints=[remaining], port=53, protocol="UDP"
                )
            }
        )
    deadline = time.monotonic() + 5.0
    while net.connect("c1", VIP, 53, proto="udp", src_port=40053) != [remaining]:
        # Without the flush the old conntrack entry would keep DNATing to `stuck`.
        assert time.monotonic() < deadline, f"datagrams still go to {stuck}"
        time.sleep(0.2)


@pytest.mark.parametrize("mode", MODES)
def test_virtual_ip_works_from_the_node_itself_and_an_endpoint_reaches_itself(
    net: Topology, mode: str
) -> None:
    start(net, mode, [proxy_service("web", cluster_ip=VIP, endpoints=["e1", "e2", "e3"])])
    counts = collections.Counter(net.connect("n1", VIP, 80, count=60))
    assert set(counts) == {"e1", "e2", "e3"}, counts
    for driver in net.drivers:
        driver.send({"service": proxy_service("web", cluster_ip=VIP, endpoints=["e1"])})
    for driver in net.drivers:
        driver.wait_synced(2)
    # Hairpin: e1 -> virtual IP -> e1 works only if the node masquerades it.
    assert net.connect("e1", VIP, 80, count=5) == ["e1"] * 5
