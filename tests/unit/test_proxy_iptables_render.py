"""The iptables ruleset compared whole (sorted), and its structural rules."""

from __future__ import annotations

import re

import pytest

from kopflet.agent.proxy.chain_names import endpoint_chain, service_chain
from kopflet.agent.proxy.fake_backend import BUILTIN_CHAINS, TARGETS
from kopflet.agent.proxy.iptables_render import HOOKS, render_iptables_ruleset
from kopflet.agent.proxy.model import ChainName, EndpointInfo, ServicePortInfo, ServicePortName

pytestmark = pytest.mark.unit

WEB = ServicePortName("default", "web", "http")
DNS = ServicePortName("kube", "dns", "dns")
E1 = EndpointInfo("10.244.1.2", 8080)
E2 = EndpointInfo("10.244.2.2", 8080)
E3 = EndpointInfo("10.244.3.2", 8080)

FIXED_FILTER = [
    "*filter",
    ":KOPFLET-SERVICES - [0:0]",
    ":KOPFLET-EXTERNAL-SERVICES - [0:0]",
    ":KOPFLET-FORWARD - [0:0]",
    ":KOPFLET-PROXY-CANARY - [0:0]",
    '-A KOPFLET-PROXY-CANARY -m comment --comment "kopflet canary" -j RETURN',
    "-A KOPFLET-FORWARD -m conntrack --ctstate NEW -j KOPFLET-SERVICES",
    '-A KOPFLET-FORWARD -m comment --comment "kopflet forwarding rules"'
    " -m mark --mark 0x4000/0x4000 -j ACCEPT",
    '-A KOPFLET-FORWARD -m comment --comment "kopflet forwarding conntrack rule"'
    " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    "COMMIT",
]
FIXED_NAT = [
    "*nat",
    ":KOPFLET-SERVICES - [0:0]",
    ":KOPFLET-NODEPORTS - [0:0]",
    ":KOPFLET-POSTROUTING - [0:0]",
    ":KOPFLET-MARK-MASQ - [0:0]",
    ":KOPFLET-PROXY-CANARY - [0:0]",
    '-A KOPFLET-PROXY-CANARY -m comment --comment "kopflet canary" -j RETURN',
    "-A KOPFLET-MARK-MASQ -j MARK --or-mark 0x4000",
    "-A KOPFLET-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
    "-A KOPFLET-POSTROUTING -j MARK --xor-mark 0x4000",
    '-A KOPFLET-POSTROUTING -m comment --comment "kopflet service traffic requiring SNAT"'
    " -j MASQUERADE --random-fully",
    '-A KOPFLET-SERVICES -m comment --comment "kopflet service nodeports; NOTE: this must be'
    ' the last rule in this chain" -m addrtype --dst-type LOCAL -j KOPFLET-NODEPORTS',
    "COMMIT",
]


def sorted_lines(text: str) -> list[str]:
    return sorted(line for line in text.splitlines() if line)


def assert_ruleset(text: str, *extra: str) -> None:
    assert sorted_lines(text) == sorted([*FIXED_FILTER, *FIXED_NAT, *extra])


def undefined_jumps(text: str, *, existing: dict[str, set[str]] | None = None) -> list[str]:
    """Rules whose chain or jump target is neither built in nor declared (nor ``existing``)."""
    problems = []
    table = ""
    declared: set[str] = set()
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
            declared = set(BUILTIN_CHAINS[table]) | (existing or {}).get(table, set())
            declared |= {
                ln[1:].split()[0]
                for ln in text.split(f"*{table}")[1].split("COMMIT")[0].splitlines()
                if ln.startswith(":")
            }
        elif line.startswith(("-A ", "-I ")):
            chain = line.split()[1]
            target = m.group(1) if (m := re.search(r" -j (\S+)", line)) else None
            if chain not in declared or (
                target is not None and target not in TARGETS and target not in declared
            ):
                problems.append(f"{table}: {line}")
    return problems


def test_cluster_ip_service_balances_three_endpoints_with_1_over_n_minus_i() -> None:
    info = ServicePortInfo(cluster_ip="10.96.0.10", port=80, protocol="TCP", endpoints=(E1, E2, E3))
    text = render_iptables_ruleset({WEB: info}, missing_hooks=()).text
    svc = service_chain(WEB, "TCP")
    s1, s2, s3 = (endpoint_chain(WEB, "TCP", e) for e in (E1, E2, E3))
    c = '-m comment --comment "default/web:http'
    assert_ruleset(
        text,
        f":{svc} - [0:0]",
        f":{s1} - [0:0]",
        f":{s2} - [0:0]",
        f":{s3} - [0:0]",
        f'-A KOPFLET-SERVICES {c} cluster IP" -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j {svc}',
        f'-A {svc} {c} -> 10.244.1.2:8080" -m statistic --mode random'
        f" --probability 0.3333333333 -j {s1}",
        f'-A {svc} {c} -> 10.244.2.2:8080" -m statistic --mode random'
        f" --probability 0.5000000000 -j {s2}",
        f'-A {svc} {c} -> 10.244.3.2:8080" -j {s3}',
        f'-A {s1} {c}" -s 10.244.1.2/32 -j KOPFLET-MARK-MASQ',
        f'-A {s1} {c}" -p tcp -m tcp -j DNAT --to-destination 10.244.1.2:8080',
        f'-A {s2} {c}" -s 10.244.2.2/32 -j KOPFLET-MARK-MASQ',
        f'-A {s2} {c}" -p tcp -m tcp -j DNAT --to-destination 10.244.2.2:8080',
        f'-A {s3} {c}" -s 10.244.3.2/32 -j KOPFLET-MARK-MASQ',
        f'-A {s3} {c}" -p tcp -m tcp -j DNAT --to-destination 10.244.3.2:8080',
    )
    assert undefined_jumps(text) == []


def test_node_port_service_marks_for_masquerade_then_jumps_to_the_service_chain() -> None:
    info = ServicePortInfo(
        cluster_ip="10.96.0.10", port=80, protocol="TCP", endpoints=(E1,), node_port=30080
    )
    text = render_iptables_ruleset({WEB: info}, missing_hooks=()).text
    svc, s1 = service_chain(WEB, "TCP"), endpoint_chain(WEB, "TCP", E1)
    c = '-m comment --comment "default/web:http'
    assert_ruleset(
        text,
        f":{svc} - [0:0]",
        f":{s1} - [0:0]",
        f'-A KOPFLET-SERVICES {c} cluster IP" -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j {svc}',
        f'-A KOPFLET-NODEPORTS {c}" -p tcp -m tcp --dport 30080 -j KOPFLET-MARK-MASQ',
        f'-A KOPFLET-NODEPORTS {c}" -p tcp -m tcp --dport 30080 -j {svc}',
        f'-A {svc} {c} -> 10.244.1.2:8080" -j {s1}',
        f'-A {s1} {c}" -s 10.244.1.2/32 -j KOPFLET-MARK-MASQ',
        f'-A {s1} {c}" -p tcp -m tcp -j DNAT --to-destination 10.244.1.2:8080',
    )
    assert undefined_jumps(text) == []


def test_service_without_endpoints_is_rejected_in_filter_and_has_no_nat_chains() -> None:
    info = ServicePortInfo(cluster_ip="10.96.0.10", port=80, protocol="TCP", node_port=30080)
    rendered = render_iptables_ruleset({WEB: info}, missing_hooks=())
    c = '-m comment --comment "default/web:http has no endpoints"'
    assert_ruleset(
        rendered.text,
        f"-A KOPFLET-SERVICES {c} -d 10.96.0.10/32 -p tcp -m tcp --dport 80"
        " -j REJECT --reject-with tcp-reset",
        f"-A KOPFLET-EXTERNAL-SERVICES {c} -m addrtype --dst-type LOCAL"
        " -p tcp -m tcp --dport 30080 -j REJECT --reject-with tcp-reset",
    )
    assert not any(chain.startswith("KFL-") for chain in rendered.chains["nat"])


def test_client_ip_affinity_checks_recent_lists_before_balancing_and_sets_them_on_dnat() -> None:
    info = ServicePortInfo(
        cluster_ip="10.96.0.10", port=80, protocol="TCP", endpoints=(E1, E2), affinity_timeout=60
    )
    text = render_iptables_ruleset({WEB: info}, missing_hooks=()).text
    svc = service_chain(WEB, "TCP")
    s1, s2 = (endpoint_chain(WEB, "TCP", e) for e in (E1, E2))
    c = '-m comment --comment "default/web:http'
    assert_ruleset(
        text,
        f":{svc} - [0:0]",
        f":{s1} - [0:0]",
        f":{s2} - [0:0]",
        f'-A KOPFLET-SERVICES {c} cluster IP" -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j {svc}',
        f'-A {svc} {c} -> 10.244.1.2:8080" -m recent --name {s1} --rcheck --seconds 60 --reap'
        f" -j {s1}",
        f'-A {svc} {c} -> 10.244.2.2:8080" -m recent --name {s2} --rcheck --seconds 60 --reap'
        f" -j {s2}",
        f'-A {svc} {c} -> 10.244.1.2:8080" -m statistic --mode random'
        f" --probability 0.5000000000 -j {s1}",
        f'-A {svc} {c} -> 10.244.2.2:8080" -j {s2}',
        f'-A {s1} {c}" -s 10.244.1.2/32 -j KOPFLET-MARK-MASQ',
        f'-A {s1} {c}" -p tcp -m recent --name {s1} --set -m tcp'
        " -j DNAT --to-destination 10.244.1.2:8080",
        f'-A {s2} {c}" -s 10.244.2.2/32 -j KOPFLET-MARK-MASQ',
        f'-A {s2} {c}" -p tcp -m recent --name {s2} --set -m tcp'
        " -j DNAT --to-destination 10.244.2.2:8080",
    )
    # The affinity checks come first, or balancing would override stickiness.
    svc_rules = [ln for ln in text.splitlines() if ln.startswith(f"-A {svc} ")]
    assert ["recent" in r for r in svc_rules] == [True, True, False, False]


def test_udp_service_matches_and_dnats_udp() -> None:
    e = EndpointInfo("10.244.1.5", 5353)
    info = ServicePortInfo(cluster_ip="10.96.0.53", port=53, protocol="UDP", endpoints=(e,))
    text = render_iptables_ruleset({DNS: info}, missing_hooks=()).text
    svc, sep = service_chain(DNS, "UDP"), endpoint_chain(DNS, "UDP", e)
    c = '-m comment --comment "kube/dns:dns'
    assert_ruleset(
        text,
        f":{svc} - [0:0]",
        f":{sep} - [0:0]",
        f'-A KOPFLET-SERVICES {c} cluster IP" -d 10.96.0.53/32 -p udp -m udp --dport 53 -j {svc}',
        f'-A {svc} {c} -> 10.244.1.5:5353" -j {sep}',
        f'-A {sep} {c}" -s 10.244.1.5/32 -j KOPFLET-MARK-MASQ',
        f'-A {sep} {c}" -p udp -m udp -j DNAT --to-destination 10.244.1.5:5353',
    )


def test_instance_subnets_are_accepted_in_forward_both_ways() -> None:
    text = render_iptables_ruleset({}, instance_cidrs=["10.244.2.0/24"], missing_hooks=()).text
    c = '-m comment --comment "kopflet instance subnet"'
    assert_ruleset(
        text,
        f"-A KOPFLET-FORWARD {c} -d 10.244.2.0/24 -j ACCEPT",
        f"-A KOPFLET-FORWARD {c} -s 10.244.2.0/24 -j ACCEPT",
    )


def test_missing_hooks_are_inserted_at_the_top_of_their_builtin_chains() -> None:
    text = render_iptables_ruleset({}, missing_hooks=HOOKS).text
    inserted = [ln for ln in text.splitlines() if ln.startswith("-I ")]
    assert sorted(ln.split()[1] for ln in inserted) == sorted(
        ["INPUT", "OUTPUT", "FORWARD", "PREROUTING", "OUTPUT", "POSTROUTING"]
    )
    assert all(ln.split()[2] == "1" for ln in inserted)
    assert undefined_jumps(text) == []


def test_stale_chains_are_flushed_then_deleted_but_active_ones_are_kept() -> None:
    info = ServicePortInfo(cluster_ip="10.96.0.10", port=80, protocol="TCP", endpoints=(E1,))
    svc = service_chain(WEB, "TCP")
    text = render_iptables_ruleset(
        {WEB: info}, stale_chains={"nat": {ChainName("KFL-SVC-GONE"), svc}}, missing_hooks=()
    ).text
    lines = text.splitlines()
    assert ":KFL-SVC-GONE - [0:0]" in lines and "-X KFL-SVC-GONE" in lines
    assert f"-X {svc}" not in lines
    assert lines.index("-X KFL-SVC-GONE") > max(i for i, ln in enumerate(lines) if "-A " in ln)


def test_partial_render_skips_unchanged_service_chains_but_keeps_their_jumps() -> None:
    web = ServicePortInfo(cluster_ip="10.96.0.10", port=80, protocol="TCP", endpoints=(E1,))
    dns = ServicePortInfo(
        cluster_ip="10.96.0.53",
        port=53,
        protocol="UDP",
        endpoints=(EndpointInfo("10.244.1.5", 53),),
    )
    rendered = render_iptables_ruleset({WEB: web, DNS: dns}, skip={WEB}, missing_hooks=())
    svc, sep = service_chain(WEB, "TCP"), endpoint_chain(WEB, "TCP", E1)
    lines = rendered.text.splitlines()
    assert f":{svc} - [0:0]" not in lines and not any(ln.startswith(f"-A {svc}") for ln in lines)
    assert any(ln.startswith("-A KOPFLET-SERVICES") and ln.endswith(f"-j {svc}") for ln in lines)
    assert {svc, sep} <= rendered.chains["nat"]
    assert set(rendered.rules_by_service) == {DNS}
    # The skipped chains exist already: with them, nothing jumps into the void.
    assert undefined_jumps(rendered.text, existing={"nat": {svc, sep}}) == []


def test_many_services_render_no_jump_to_an_undefined_chain() -> None:
    ports = {
        ServicePortName("ns", f"svc{i}", "p"): ServicePortInfo(
            cluster_ip=f"10.96.{i // 250}.{i % 250 + 1}",
            port=80 + i % 3,
            protocol="UDP" if i % 4 == 0 else "TCP",
            endpoints=tuple(EndpointInfo(f"10.244.{j}.{i % 250 + 2}", 8080) for j in range(i % 5)),
            node_port=30000 + i if i % 2 else None,
            affinity_timeout=30 if i % 3 == 0 else None,
        )
        for i in range(60)
    }
    text = render_iptables_ruleset(ports, instance_cidrs=["10.244.0.0/24"]).text
    assert undefined_jumps(text) == []


def test_chain_names_are_stable_prefixed_and_fit_iptables_limit() -> None:
    svc = service_chain(WEB, "TCP")
    assert svc == service_chain(ServicePortName("default", "web", "http"), "TCP")
    assert svc != service_chain(WEB, "UDP")
    sep = endpoint_chain(WEB, "TCP", E1)
    assert svc.startswith("KFL-SVC-") and sep.startswith("KFL-SEP-")
    assert len(svc) <= 28 and len(sep) <= 28


def test_partial_render_reuses_the_last_syncs_rules_of_skipped_service_ports_only_if_same() -> None:
    web = ServicePortInfo(
        cluster_ip="10.96.0.10", port=80, protocol="TCP", endpoints=(E1, E2), node_port=30080
    )
    dns = ServicePortInfo(cluster_ip="10.96.0.53", port=53, protocol="UDP", endpoints=(E3,))
    last = render_iptables_ruleset({WEB: web, DNS: dns}, missing_hooks=())
    # WEB changed behind the tracker's back (a stale ``skip``): its new node port must be
    # rendered, not taken from what the last sync wrote.
    moved = ServicePortInfo(
        cluster_ip="10.96.0.10", port=80, protocol="TCP", endpoints=(E1, E2), node_port=30081
    )
    for ports in ({WEB: web, DNS: dns}, {WEB: moved, DNS: dns}):
        kwargs = dict(skip={WEB}, stale_chains=last.chains, missing_hooks=())
        reused = render_iptables_ruleset(
            ports,
            programmed_shared=last.shared_digests,
            programmed_by_service=last.by_service,
            **kwargs,
        )
        fresh = render_iptables_ruleset(ports, programmed_shared=last.shared_digests, **kwargs)
        assert reused.text == fresh.text
        assert reused.shared_digests == fresh.shared_digests
        assert reused.chains == fresh.chains
    assert reused.by_service[WEB].info is moved
    assert any("--dport 30081" in line for line in reused.text.splitlines())
    unchanged = render_iptables_ruleset(
        {WEB: web, DNS: dns},
        skip={WEB, DNS},
        stale_chains=last.chains,
        missing_hooks=(),
        programmed_shared=last.shared_digests,
        programmed_by_service=last.by_service,
    )
    assert unchanged.text == "" and unchanged.by_service[WEB] is last.by_service[WEB]
