"""The nftables ruleset: compared whole (sorted) for a representative case, and structure."""

from __future__ import annotations

import re

import pytest

from kopflet.agent.proxy.chain_names import (
    nft_affinity_set,
    nft_endpoint_chain,
    nft_external_chain,
    nft_service_chain,
)
from kopflet.agent.proxy.model import ChainName, EndpointInfo, ServicePortInfo, ServicePortName
from kopflet.agent.proxy.nftables_render import render_nftables_ruleset

pytestmark = pytest.mark.unit

WEB = ServicePortName("default", "web", "http")
DNS = ServicePortName("kube", "dns")
E1 = EndpointInfo("10.244.1.2", 8080)
E2 = EndpointInfo("10.244.2.2", 8080)
T = "ip kopflet"

FIXED = [
    f'add table {T} {{ comment "kopflet proxy rules" ; }}',
    f"add chain {T} nat-prerouting {{ type nat hook prerouting priority dstnat ;"
    " policy accept ; }",
    f"add chain {T} nat-output {{ type nat hook output priority -100 ; policy accept ; }}",
    f"add chain {T} nat-postrouting {{ type nat hook postrouting priority srcnat ;"
    " policy accept ; }",
    f"add chain {T} filter-input {{ type filter hook input priority -10 ; policy accept ; }}",
    f"add chain {T} filter-output {{ type filter hook output priority -10 ; policy accept ; }}",
    f"add chain {T} filter-forward {{ type filter hook forward priority -10 ; policy accept ; }}",
    *(
        f"add chain {T} {c}"
        for c in ("services", "mark-for-masquerade", "masquerading", "reject-chain", "canary")
    ),
    f"add map {T} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}",
    f"add map {T} service-nodeports {{ type inet_proto . inet_service : verdict ; }}",
    f"add map {T} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service :"
    " verdict ; }",
    f"add map {T} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; }}",
    f"add set {T} instance-subnets {{ type ipv4_addr ; flags interval ; }}",
    *(
        f"flush chain {T} {c}"
        for c in (
            "nat-prerouting",
            "nat-output",
            "nat-postrouting",
            "filter-input",
            "filter-output",
            "filter-forward",
            "services",
            "mark-for-masquerade",
            "masquerading",
            "reject-chain",
            "canary",
        )
    ),
    *(
        f"flush map {T} {m}"
        for m in (
            "service-ips",
            "service-nodeports",
            "no-endpoint-services",
            "no-endpoint-nodeports",
        )
    ),
    f"flush set {T} instance-subnets",
    f"add rule {T} nat-prerouting jump services",
    f"add rule {T} nat-output jump services",
    f"add rule {T} nat-postrouting jump masquerading",
    f"add rule {T} services ip daddr . meta l4proto . th dport vmap @service-ips",
    f"add rule {T} services fib daddr type local meta l4proto . th dport vmap @service-nodeports",
    f"add rule {T} filter-input ct state new fib daddr type local meta l4proto . th dport"
    " vmap @no-endpoint-nodeports",
    f"add rule {T} filter-output ct state new ip daddr . meta l4proto . th dport"
    " vmap @no-endpoint-services",
    f"add rule {T} filter-forward ct state new ip daddr . meta l4proto . th dport"
    " vmap @no-endpoint-services",
    f"add rule {T} filter-forward meta mark & 0x4000 != 0 accept",
    f"add rule {T} filter-forward ct state related,established accept",
    f"add rule {T} filter-forward ip daddr @instance-subnets accept",
    f"add rule {T} filter-forward ip saddr @instance-subnets accept",
    f"add rule {T} reject-chain meta l4proto tcp reject with tcp reset",
    f"add rule {T} reject-chain reject",
    f'add rule {T} canary return comment "kopflet canary"',
    f"add rule {T} mark-for-masquerade meta mark set meta mark | 0x4000",
    f"add rule {T} masquerading meta mark & 0x4000 == 0 return",
    f"add rule {T} masquerading meta mark set meta mark ^ 0x4000",
    f"add rule {T} masquerading masquerade fully-random",
]


def undefined_references(text: str) -> list[str]:
    """Chains jumped to and sets/maps looked up that the text never declares."""
    declared = set(re.findall(r"^add (?:chain|set|map) ip kopflet (\S+)", text, re.M))
    problems = []
    for line in text.splitlines():
        for name in re.findall(r"(?:goto|jump) ([\w-]+)", line) + re.findall(r"@([\w-]+)", line):
            if name not in declared:
                problems.append(f"{name}: {line}")
    return problems


def test_node_port_service_with_affinity_and_a_service_without_endpoints() -> None:
    web = ServicePortInfo(
        cluster_ip="10.96.0.10",
        port=80,
        protocol="TCP",
        endpoints=(E1, E2),
        node_port=30080,
        affinity_timeout=60,
    )
    dns = ServicePortInfo(cluster_ip="10.96.0.53", port=53, protocol="UDP", node_port=30053)
    rendered = render_nftables_ruleset({WEB: web, DNS: dns}, instance_cidrs=["10.244.1.0/24"])
    svc, ext = nft_service_chain(WEB, "TCP"), nft_external_chain(WEB, "TCP")
    s1, s2 = (nft_endpoint_chain(WEB, "TCP", e) for e in (E1, E2))
    a1, a2 = (nft_affinity_set(WEB, "TCP", e, 60) for e in (E1, E2))
    c = 'comment "default/web:http"'
    expected = [
        *FIXED,
        *(f"add chain {T} {x}" for x in (svc, s1, s2, ext)),
        *(f"flush chain {T} {x}" for x in (svc, s1, s2, ext)),
        *(
            f"add set {T} {a} {{ type ipv4_addr ; flags dynamic,timeout ; timeout 60s ; }}"
            for a in (a1, a2)
        ),
        f"add element {T} instance-subnets {{ 10.244.1.0/24 }}",
        f"add rule {T} {ext} jump mark-for-masquerade {c}",
        f"add rule {T} {ext} goto {svc}",
        f"add rule {T} {svc} ip saddr @{a1} goto {s1}",
        f"add rule {T} {svc} ip saddr @{a2} goto {s2}",
        f"add rule {T} {svc} numgen random mod 2 vmap {{ 0 : goto {s1}, 1 : goto {s2} }} {c}",
        f"add rule {T} {s1} ip saddr 10.244.1.2 jump mark-for-masquerade",
        f"add rule {T} {s1} update @{a1} {{ ip saddr }}",
        f"add rule {T} {s1} meta l4proto tcp dnat to 10.244.1.2:8080 {c}",
        f"add rule {T} {s2} ip saddr 10.244.2.2 jump mark-for-masquerade",
        f"add rule {T} {s2} update @{a2} {{ ip saddr }}",
        f"add rule {T} {s2} meta l4proto tcp dnat to 10.244.2.2:8080 {c}",
        f"add element {T} service-ips {{ 10.96.0.10 . tcp . 80 : goto {svc} }}",
        f"add element {T} service-nodeports {{ tcp . 30080 : goto {ext} }}",
        f"add element {T} no-endpoint-services {{ 10.96.0.53 . udp . 53 : goto reject-chain }}",
        f"add element {T} no-endpoint-nodeports {{ udp . 30053 : goto reject-chain }}",
    ]
    assert sorted(rendered.text.splitlines()) == sorted(expected)
    assert undefined_references(rendered.text) == []
    assert rendered.sets == {"instance-subnets", a1, a2}


def test_declarations_come_before_flushes_before_rules_before_deletions() -> None:
    web = ServicePortInfo(cluster_ip="10.96.0.10", port=80, protocol="TCP", endpoints=(E1,))
    lines = render_nftables_ruleset(
        {WEB: web}, stale_chains={ChainName("sep-GONE")}, stale_sets={ChainName("aff-GONE")}
    ).text.splitlines()
    kinds = [ln.split()[0] for ln in lines]
    order = {"add": 0, "flush": 1, "delete": 3}
    phases = [
        2 if ln.startswith(("add rule", "add element")) else order[k]
        for ln, k in zip(lines, kinds, strict=True)
    ]
    assert phases == sorted(phases)
    assert f"flush chain {T} sep-GONE" in lines and lines[-2:] == [
        f"delete chain {T} sep-GONE",
        f"delete set {T} aff-GONE",
    ]


def test_partial_render_leaves_unchanged_chains_and_affinity_sets_alone() -> None:
    web = ServicePortInfo(
        cluster_ip="10.96.0.10", port=80, protocol="TCP", endpoints=(E1,), affinity_timeout=5
    )
    svc, s1 = nft_service_chain(WEB, "TCP"), nft_endpoint_chain(WEB, "TCP", E1)
    rendered = render_nftables_ruleset({WEB: web}, skip={WEB})
    assert svc not in rendered.text.replace(f"goto {svc}", "")
    assert f"add element {T} service-ips {{ 10.96.0.10 . tcp . 80 : goto {svc} }}" in rendered.text
    assert {svc, s1} <= rendered.chains
    assert nft_affinity_set(WEB, "TCP", E1, 5) in rendered.sets
    assert rendered.rules_by_service == {}


def test_a_single_endpoint_needs_no_random_choice() -> None:
    web = ServicePortInfo(cluster_ip="10.96.0.10", port=80, protocol="TCP", endpoints=(E1,))
    text = render_nftables_ruleset({WEB: web}).text
    assert "numgen" not in text
    svc, s1 = nft_service_chain(WEB, "TCP"), nft_endpoint_chain(WEB, "TCP", E1)
    assert f'add rule {T} {svc} goto {s1} comment "default/web:http"' in text.splitlines()


def test_a_new_affinity_timeout_makes_a_new_set() -> None:
    assert nft_affinity_set(WEB, "TCP", E1, 60) != nft_affinity_set(WEB, "TCP", E1, 61)
