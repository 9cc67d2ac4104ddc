"""The nftables ruleset: compared whole (sorted) for a representative case, and structure."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from kopflet.agent.proxy import nftables_render
from kopflet.agent.proxy.chain_names import (
    nft_affinity_set,
    nft_endpoint_chain,
    nft_external_chain,
    nft_service_chain,
)
from kopflet.agent.proxy.model import (
    ChainName,
    EndpointInfo,
    NodeName,
    ServicePortInfo,
    ServicePortName,
)
from kopflet.agent.proxy.nftables_render import (
    NftElement,
    NftServicePort,
    RenderedNftRuleset,
    render_nftables_partial,
    render_nftables_ruleset,
)

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
    *(
        f"add map {T} service-endpoints-{p}-g0 {{ typeof ip daddr . {p} dport . numgen random mod 1"
        f" : ip daddr . {p} dport ; }}"
        for p in ("tcp", "udp")
    ),
    *(
        f"add map {T} nodeport-endpoints-{p}-g0 {{ typeof {p} dport . numgen random mod 1"
        f" : ip daddr . {p} dport ; }}"
        for p in ("tcp", "udp")
    ),
    f"add set {T} hairpin-endpoints-g0 {{ type ipv4_addr . ipv4_addr ; }}",
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
            "service-endpoints-tcp-g0",
            "service-endpoints-udp-g0",
            "nodeport-endpoints-tcp-g0",
            "nodeport-endpoints-udp-g0",
        )
    ),
    f"flush set {T} hairpin-endpoints-g0",
    f"flush set {T} instance-subnets",
    f"add rule {T} nat-prerouting jump services",
    f"add rule {T} nat-output jump services",
    f"add rule {T} nat-postrouting ip saddr . ip daddr @hairpin-endpoints-g0"
    " jump mark-for-masquerade",
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
        f"add rule {T} {s1} update @{a1} {{ ip saddr }}",
        f"add rule {T} {s1} meta l4proto tcp dnat to 10.244.1.2:8080 {c}",
        f"add rule {T} {s2} update @{a2} {{ ip saddr }}",
        f"add rule {T} {s2} meta l4proto tcp dnat to 10.244.2.2:8080 {c}",
        f"add element {T} service-ips {{ 10.96.0.10 . tcp . 80 : goto {svc} }}",
        f"add element {T} service-nodeports {{ tcp . 30080 : goto {ext} }}",
        f"add element {T} no-endpoint-services {{ 10.96.0.53 . udp . 53 : goto reject-chain }}",
        f"add element {T} no-endpoint-nodeports {{ udp . 30053 : goto reject-chain }}",
        f"add element {T} hairpin-endpoints-g0"
        " { 10.244.1.2 . 10.244.1.2, 10.244.2.2 . 10.244.2.2 }",
    ]
    assert sorted(rendered.text.splitlines()) == sorted(expected)
    assert undefined_references(rendered.text) == []
    assert rendered.sets == {"instance-subnets", "hairpin-endpoints-g0", a1, a2}


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


def _refs(full: RenderedNftRuleset) -> tuple[dict[NftElement, int], dict[ChainName, int]]:
    """What the proxier counts after a full sync: the service-ports wanting each entry
    and each shared chain."""
    elements: Counter[NftElement] = Counter()
    chains: Counter[ChainName] = Counter()
    for owned in full.service_ports.values():
        elements.update(owned.elements)
        chains.update(owned.shared_chains)
    return dict(elements), dict(chains)


def _partial_lines(text: str) -> list[str]:
    """A partial render's lines minus the fixed part every sync rewrites."""
    fixed = set(FIXED)
    return [ln for ln in text.splitlines() if ln not in fixed]


def test_partial_render_leaves_unchanged_chains_and_affinity_sets_alone() -> None:
    web = ServicePortInfo(
        cluster_ip="10.96.0.10", port=80, protocol="TCP", endpoints=(E1,), affinity_timeout=5
    )
    dns = ServicePortInfo(cluster_ip="10.96.0.53", port=53, protocol="UDP", endpoints=(E2,))
    full = render_nftables_ruleset({WEB: web, DNS: dns})
    refs, chain_refs = _refs(full)
    rendered = render_nftables_partial(
        {WEB: web, DNS: dns},
        changed={DNS, WEB},
        programmed=full.service_ports,
        element_refs=refs,
        chain_refs=chain_refs,
    )
    svc, s1 = nft_service_chain(WEB, "TCP"), nft_endpoint_chain(WEB, "TCP", E1)
    # WEB (affinity) rewrites its own chains; its affinity set is declared, never flushed.
    assert f"flush chain {T} {svc}" in rendered.text and f"flush chain {T} {s1}" in rendered.text
    assert "flush set" not in rendered.text.replace(f"flush set {T} instance-subnets", "")
    # DNS owns only entries, none of which changed: nothing of it is written.
    assert "10.96.0.53" not in rendered.text and "pick-udp-1" not in rendered.text
    assert "element" not in rendered.text and "delete" not in rendered.text
    assert "flush map" not in rendered.text
    assert set(rendered.service_ports) == {DNS, WEB}


def test_a_service_port_without_affinity_owns_only_map_entries_and_shares_a_chain() -> None:
    web = ServicePortInfo(
        cluster_ip="10.96.0.10", port=80, protocol="TCP", endpoints=(E1, E2), node_port=30080
    )
    api = ServicePortInfo(cluster_ip="10.96.0.11", port=443, protocol="TCP", endpoints=(E1, E2))
    rendered = render_nftables_ruleset({WEB: web, DNS: api})
    lines = [ln for ln in rendered.text.splitlines() if ln not in FIXED]
    assert sorted(lines) == sorted(
        [
            f"add chain {T} pick-tcp-2",
            f"add chain {T} nodeport-pick-tcp-2",
            f"flush chain {T} pick-tcp-2",
            f"flush chain {T} nodeport-pick-tcp-2",
            f"add rule {T} pick-tcp-2 dnat ip to ip daddr . tcp dport . numgen random mod 2"
            " map @service-endpoints-tcp-g0",
            f"add rule {T} nodeport-pick-tcp-2 jump mark-for-masquerade",
            f"add rule {T} nodeport-pick-tcp-2 dnat ip to tcp dport . numgen random mod 2"
            " map @nodeport-endpoints-tcp-g0",
            f"add element {T} service-ips {{ 10.96.0.10 . tcp . 80 : goto pick-tcp-2,"
            " 10.96.0.11 . tcp . 443 : goto pick-tcp-2 }",
            f"add element {T} service-nodeports {{ tcp . 30080 : goto nodeport-pick-tcp-2 }}",
            f"add element {T} service-endpoints-tcp-g0 {{ 10.96.0.10 . 80 . 0 : 10.244.1.2 . 8080,"
            " 10.96.0.10 . 80 . 1 : 10.244.2.2 . 8080, 10.96.0.11 . 443 . 0 : 10.244.1.2 . 8080,"
            " 10.96.0.11 . 443 . 1 : 10.244.2.2 . 8080 }",
            f"add element {T} nodeport-endpoints-tcp-g0 {{ 30080 . 0 : 10.244.1.2 . 8080,"
            " 30080 . 1 : 10.244.2.2 . 8080 }",
            f"add element {T} hairpin-endpoints-g0 {{ 10.244.1.2 . 10.244.1.2,"
            " 10.244.2.2 . 10.244.2.2 }",
        ]
    )
    assert undefined_references(rendered.text) == []
    assert rendered.service_ports[WEB].chains == frozenset()
    assert rendered.service_ports[WEB].shared_chains == {"pick-tcp-2", "nodeport-pick-tcp-2"}
    assert rendered.rules_by_service == {}


def test_a_partial_sync_writes_only_the_changed_service_port_and_its_map_entries() -> None:
    others = {
        ServicePortName("bulk", f"s{i}"): ServicePortInfo(
            cluster_ip=f"10.96.1.{i}",
            port=80,
            protocol="TCP",
            endpoints=(EndpointInfo(f"10.244.3.{i}", 8080),),
            node_port=31000 + i,
        )
        for i in range(50)
    }
    web = ServicePortInfo(
        cluster_ip="10.96.0.10", port=80, protocol="TCP", endpoints=(E1, E2), node_port=30080
    )
    before = {**others, WEB: web}
    full = render_nftables_ruleset(before)
    refs, chain_refs = _refs(full)

    # One endpoint gone: its entries go, the virtual IP and node port move to the
    # one-endpoint chains (already there for the others), the two-endpoint chains,
    # used by nobody else, are deleted last.
    one_gone = render_nftables_partial(
        {**others, WEB: replace(web, endpoints=(E1,))},
        changed={WEB},
        programmed=full.service_ports,
        element_refs=refs,
        chain_refs=chain_refs,
    )
    lines = _partial_lines(one_gone.text)
    assert sorted(lines) == sorted(
        [
            f"delete element {T} service-ips {{ 10.96.0.10 . tcp . 80 }}",
            f"delete element {T} service-nodeports {{ tcp . 30080 }}",
            f"delete element {T} service-endpoints-tcp-g0 {{ 10.96.0.10 . 80 . 1 }}",
            f"delete element {T} nodeport-endpoints-tcp-g0 {{ 30080 . 1 }}",
            f"delete element {T} hairpin-endpoints-g0 {{ 10.244.2.2 . 10.244.2.2 }}",
            f"add element {T} service-ips {{ 10.96.0.10 . tcp . 80 : goto pick-tcp-1 }}",
            f"add element {T} service-nodeports {{ tcp . 30080 : goto nodeport-pick-tcp-1 }}",
            *(f"flush chain {T} {c}" for c in ("pick-tcp-2", "nodeport-pick-tcp-2")),
            *(f"delete chain {T} {c}" for c in ("nodeport-pick-tcp-2", "pick-tcp-2")),
        ]
    )
    first_add = min(i for i, ln in enumerate(lines) if ln.startswith("add element"))
    assert all(i < first_add for i, ln in enumerate(lines) if ln.startswith("delete element"))
    assert lines[-2:] == [f"delete chain {T} nodeport-pick-tcp-2", f"delete chain {T} pick-tcp-2"]
    assert one_gone.chain_refs == {
        "pick-tcp-1": 51,
        "nodeport-pick-tcp-1": 51,
        "pick-tcp-2": 0,
        "nodeport-pick-tcp-2": 0,
    }

    # A third endpoint: the three-endpoint chains are made before the entries going to them.
    e3 = EndpointInfo("10.244.4.2", 9090)
    one_more = render_nftables_partial(
        {**others, WEB: replace(web, endpoints=(E1, E2, e3))},
        changed={WEB},
        programmed=full.service_ports,
        element_refs=refs,
        chain_refs=chain_refs,
    )
    lines = _partial_lines(one_more.text)
    assert f"add chain {T} pick-tcp-3" in lines
    assert lines.index(f"add rule {T} nodeport-pick-tcp-3 jump mark-for-masquerade") < lines.index(
        f"add element {T} service-nodeports {{ tcp . 30080 : goto nodeport-pick-tcp-3 }}"
    )
    assert (
        f"add element {T} service-endpoints-tcp-g0 {{ 10.96.0.10 . 80 . 2 : 10.244.4.2 . 9090 }}"
        in lines
    )
    assert "10.96.0.10 . 80 . 0" not in one_more.text  # unchanged entries are left alone

    # No endpoints left: its entries move to the no-endpoint maps.
    none_left = render_nftables_partial(
        {**others, WEB: replace(web, endpoints=())},
        changed={WEB},
        programmed=full.service_ports,
        element_refs=refs,
        chain_refs=chain_refs,
    )
    lines = _partial_lines(none_left.text)
    assert (
        f"add element {T} no-endpoint-services {{ 10.96.0.10 . tcp . 80 : goto reject-chain }}"
        in lines
    )
    assert f"add element {T} no-endpoint-nodeports {{ tcp . 30080 : goto reject-chain }}" in lines
    assert (
        f"delete element {T} service-endpoints-tcp-g0"
        " { 10.96.0.10 . 80 . 0, 10.96.0.10 . 80 . 1 }" in lines
    )
    assert none_left.service_ports[WEB] is not None
    assert not none_left.service_ports[WEB].shared_chains

    # Removed: everything it owned goes, nothing of the others is named.
    removed = render_nftables_partial(
        others,
        changed={WEB},
        programmed=full.service_ports,
        element_refs=refs,
        chain_refs=chain_refs,
    )
    assert removed.service_ports == {WEB: None}
    assert all(not ln.startswith("add") for ln in _partial_lines(removed.text))
    assert "10.96.1." not in removed.text and "10.244.3." not in removed.text
    # The fixed chains and maps are there since the full sync.
    assert undefined_references("\n".join(FIXED) + one_more.text + removed.text) == []


def test_a_map_entry_two_service_ports_want_stays_until_both_are_gone() -> None:
    a, b = ServicePortName("ns", "a"), ServicePortName("ns", "b")
    info = ServicePortInfo(cluster_ip="10.96.0.10", port=80, protocol="TCP")
    full = render_nftables_ruleset({a: info, b: info})
    refs = {("no-endpoint-services", "10.96.0.10 . tcp . 80", "goto reject-chain"): 2}
    one = render_nftables_partial(
        {b: info}, changed={a}, programmed=full.service_ports, element_refs=refs
    )
    assert "element" not in one.text
    assert one.element_refs == dict.fromkeys(refs, 1)
    both = render_nftables_partial(
        {}, changed={a, b}, programmed=full.service_ports, element_refs=refs
    )
    assert f"delete element {T} no-endpoint-services {{ 10.96.0.10 . tcp . 80 }}" in both.text
    assert both.element_refs == dict.fromkeys(refs, 0)


def test_an_endpoint_in_two_service_ports_keeps_its_hairpin_entry_until_both_let_it_go() -> None:
    a, b = ServicePortName("ns", "a"), ServicePortName("ns", "b")
    info_a = ServicePortInfo(cluster_ip="10.96.0.10", port=80, protocol="TCP", endpoints=(E1,))
    info_b = ServicePortInfo(cluster_ip="10.96.0.11", port=53, protocol="UDP", endpoints=(E1,))
    full = render_nftables_ruleset({a: info_a, b: info_b})
    assert full.text.count("10.244.1.2 . 10.244.1.2") == 1
    refs, chain_refs = _refs(full)
    one = render_nftables_partial(
        {b: info_b},
        changed={a},
        programmed=full.service_ports,
        element_refs=refs,
        chain_refs=chain_refs,
    )
    assert "element ip kopflet hairpin-endpoints-g0" not in one.text
    both = render_nftables_partial(
        {},
        changed={a, b},
        programmed=full.service_ports,
        element_refs=refs,
        chain_refs=chain_refs,
    )
    assert f"delete element {T} hairpin-endpoints-g0 {{ 10.244.1.2 . 10.244.1.2 }}" in both.text
    assert (
        f"delete chain {T} pick-udp-1" in both.text and f"delete chain {T} pick-tcp-1" in both.text
    )


def test_a_single_endpoint_with_affinity_needs_no_random_choice() -> None:
    web = ServicePortInfo(
        cluster_ip="10.96.0.10", port=80, protocol="TCP", endpoints=(E1,), affinity_timeout=10
    )
    text = render_nftables_ruleset({WEB: web}).text
    assert "numgen" not in text.replace("numgen random mod 1 :", "")
    svc, s1 = nft_service_chain(WEB, "TCP"), nft_endpoint_chain(WEB, "TCP", E1)
    assert f'add rule {T} {svc} goto {s1} comment "default/web:http"' in text.splitlines()


def test_a_new_affinity_timeout_makes_a_new_set() -> None:
    assert nft_affinity_set(WEB, "TCP", E1, 60) != nft_affinity_set(WEB, "TCP", E1, 61)


def test_only_this_nodes_endpoints_get_hairpin_entries() -> None:
    here, there, unknown = (
        EndpointInfo("10.244.1.2", 8080, node_name=NodeName("n1")),
        EndpointInfo("10.244.2.2", 8080, node_name=NodeName("n2")),
        EndpointInfo("10.244.3.2", 8080),
    )
    web = ServicePortInfo(
        cluster_ip="10.96.0.10", port=80, protocol="TCP", endpoints=(here, there, unknown)
    )
    text = render_nftables_ruleset({WEB: web}, local_node="n1").text
    assert (
        f"add element {T} hairpin-endpoints-g0"
        " { 10.244.1.2 . 10.244.1.2, 10.244.3.2 . 10.244.3.2 }" in text.splitlines()
    )
    everywhere = render_nftables_ruleset({WEB: web}).text
    assert "10.244.2.2 . 10.244.2.2" in everywhere and "10.244.2.2 . 10.244.2.2" not in text


def test_a_full_render_with_a_memo_works_out_again_only_what_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rendered: list[ServicePortName] = []
    real = nftables_render._render_service_port

    def counting(
        buf: Any, name: ServicePortName, info: ServicePortInfo, local_node: str | None
    ) -> NftServicePort:
        rendered.append(name)
        return real(buf, name, info, local_node)

    monkeypatch.setattr(nftables_render, "_render_service_port", counting)
    sticky = ServicePortName("ns", "sticky")
    web = ServicePortInfo(cluster_ip="10.96.0.10", port=80, protocol="TCP", endpoints=(E1, E2))
    dns = ServicePortInfo(cluster_ip="10.96.0.53", port=53, protocol="UDP")
    with_affinity = replace(web, cluster_ip="10.96.0.11", affinity_timeout=30)
    ports = {WEB: web, DNS: dns, sticky: with_affinity}
    memo: nftables_render.RenderMemo = {}

    first = render_nftables_ruleset(ports, local_node="n1", memo=memo)
    assert sorted(rendered) == sorted(ports) and set(memo) == {WEB, DNS}
    rendered.clear()
    # Nothing changed: only the service-port with chains of its own is rendered again,
    # and the text is the same to the byte.
    again = render_nftables_ruleset(ports, local_node="n1", memo=memo)
    assert rendered == [sticky] and again.text == first.text
    assert again.element_refs == first.element_refs
    rendered.clear()
    # One endpoint less for web, dns gone: web is rendered again, dns forgotten.
    changed = {WEB: replace(web, endpoints=(E1,)), sticky: with_affinity}
    after = render_nftables_ruleset(changed, local_node="n1", memo=memo)
    assert sorted(rendered) == sorted([WEB, sticky]) and set(memo) == {WEB}
    assert after.text == render_nftables_ruleset(changed, local_node="n1").text
    assert "10.244.2.2 . 8080" not in after.text
