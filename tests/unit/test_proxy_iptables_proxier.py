"""The iptables proxier's partial syncs against the in-memory iptables: they write the
chains that changed and nothing else, shared chains only when their rules change, and
leave what one full sync of the final state leaves."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from proxy_states import check_partial_syncs

from kopflet.agent.proxy.chain_names import endpoint_chain, service_chain
from kopflet.agent.proxy.fake_backend import FakeIptablesBackend
from kopflet.agent.proxy.iptables_proxier import IptablesProxier
from kopflet.agent.proxy.iptables_render import FIXED_CHAINS, render_iptables_ruleset
from kopflet.agent.proxy.model import EndpointInfo, ServicePortInfo, ServicePortName
from kopflet.agent.proxy.netfilter_backend import NetfilterError
from kopflet.agent.proxy.proxier import ProxyState

pytestmark = pytest.mark.unit

WEB = ServicePortName("default", "web", "http")
DNS = ServicePortName("kube", "dns", "dns")
E1, E2, E3 = (EndpointInfo(f"10.244.{i}.2", 8080) for i in (1, 2, 3))
SHARED = {c for chains in FIXED_CHAINS.values() for c in chains}


def web(*endpoints: EndpointInfo, node_port: int | None = 30080) -> ServicePortInfo:
    return ServicePortInfo(
        cluster_ip="10.96.0.10", port=80, protocol="TCP", endpoints=endpoints, node_port=node_port
    )


def dns(*endpoints: EndpointInfo) -> ServicePortInfo:
    return ServicePortInfo(cluster_ip="10.96.0.53", port=53, protocol="UDP", endpoints=endpoints)


def state(
    ports: dict[ServicePortName, ServicePortInfo], cidrs: tuple[str, ...] = ("10.244.1.0/24",)
) -> ProxyState:
    return ProxyState(service_ports=ports, instance_cidrs=cidrs)


def declared(text: str) -> set[str]:
    return {line[1:].split()[0] for line in text.splitlines() if line.startswith(":")}


def written(text: str) -> set[str]:
    """Chains declared or appended to in a restore text."""
    return declared(text) | {
        line.split()[1] for line in text.splitlines() if line.startswith("-A ")
    }


def full_sync_tables(current: ProxyState) -> dict[str, dict[str, list[str]]]:
    fresh = FakeIptablesBackend()
    IptablesProxier(fresh).sync_blocking(current, changed=set(), full=True)
    return fresh.tables


def test_a_one_endpoint_change_writes_that_service_ports_chains_and_no_shared_one() -> None:
    backend = FakeIptablesBackend()
    proxier = IptablesProxier(backend)
    proxier.sync_blocking(state({WEB: web(E1, E2, E3), DNS: dns(E1)}), changed=set(), full=True)
    after = state({WEB: web(E1, E2), DNS: dns(E1)})
    outcome = proxier.sync_blocking(after, changed={WEB}, full=False)
    text = backend.restored[-1]
    svc = service_chain(WEB, "TCP")
    seps = {endpoint_chain(WEB, "TCP", e) for e in (E1, E2, E3)}
    assert written(text) == {svc, *seps}
    assert ":KOPFLET-" not in text and "-A KOPFLET-" not in text and "*filter" not in text
    assert f"-X {endpoint_chain(WEB, 'TCP', E3)}" in text
    assert backend.tables == full_sync_tables(after)
    assert outcome.rules_programmed == (
        IptablesProxier(FakeIptablesBackend())
        .sync_blocking(after, changed=set(), full=True)
        .rules_programmed
    )


@pytest.mark.parametrize(
    ("after", "rewritten"),
    [
        # Endpoints gone: the jump leaves nat KOPFLET-SERVICES/NODEPORTS for a filter REJECT.
        (
            state({WEB: web(), DNS: dns(E1)}),
            {
                ("nat", "KOPFLET-SERVICES"),
                ("nat", "KOPFLET-NODEPORTS"),
                ("filter", "KOPFLET-SERVICES"),
                ("filter", "KOPFLET-EXTERNAL-SERVICES"),
            },
        ),
        # A service-port added.
        (
            state({WEB: web(E1, E2), DNS: dns(E1), ServicePortName("x", "y"): dns(E2)}),
            {("nat", "KOPFLET-SERVICES")},
        ),
        # A service-port removed.
        (state({WEB: web(E1, E2)}), {("nat", "KOPFLET-SERVICES")}),
        # Its node port changed.
        (state({WEB: web(E1, E2, node_port=30081), DNS: dns(E1)}), {("nat", "KOPFLET-NODEPORTS")}),
        # Its virtual IP changed.
        (
            state({WEB: replace(web(E1, E2), cluster_ip="10.96.0.11"), DNS: dns(E1)}),
            {("nat", "KOPFLET-SERVICES")},
        ),
        # Instance subnets changed.
        (
            state({WEB: web(E1, E2), DNS: dns(E1)}, ("10.244.1.0/24", "10.244.2.0/24")),
            {("filter", "KOPFLET-FORWARD")},
        ),
    ],
)
def test_a_shared_chain_is_rewritten_when_its_rules_change_and_only_then(
    after: ProxyState, rewritten: set[tuple[str, str]]
) -> None:
    backend = FakeIptablesBackend()
    proxier = IptablesProxier(backend)
    before = state({WEB: web(E1, E2), DNS: dns(E1)})
    proxier.sync_blocking(before, changed=set(), full=True)
    a, b = before.service_ports, after.service_ports
    changed = {n for n in a.keys() | b.keys() if a.get(n) != b.get(n)}
    proxier.sync_blocking(after, changed=changed, full=False)
    text = backend.restored[-1]
    tables = dict(re.findall(r"\*(\w+)\n(.*?)COMMIT", text, re.S))
    shared_written = {(t, c) for t, body in tables.items() for c in written(body) & SHARED}
    assert shared_written == rewritten
    assert backend.tables == full_sync_tables(after)


def test_a_partial_sync_with_nothing_to_write_runs_no_restore() -> None:
    backend = FakeIptablesBackend()
    proxier = IptablesProxier(backend)
    current = state({WEB: web(E1)})
    proxier.sync_blocking(current, changed=set(), full=True)
    outcome = proxier.sync_blocking(current, changed=set(), full=False)
    assert not outcome.full and len(backend.restored) == 1


def test_a_full_sync_writes_every_shared_chain_even_if_unchanged() -> None:
    backend = FakeIptablesBackend()
    proxier = IptablesProxier(backend)
    current = state({WEB: web(E1)})
    proxier.sync_blocking(current, changed=set(), full=True)
    proxier.sync_blocking(current, changed=set(), full=True)
    assert declared(backend.restored[-1]) >= SHARED


def test_a_failed_partial_sync_forgets_the_shared_chains_and_the_next_sync_repairs_them() -> None:
    backend = FakeIptablesBackend()
    proxier = IptablesProxier(backend)
    proxier.sync_blocking(state({WEB: web(E1, E2), DNS: dns(E1)}), changed=set(), full=True)
    backend.fail_restores = 1
    with pytest.raises(NetfilterError):
        proxier.sync_blocking(state({WEB: web(E1), DNS: dns(E1)}), changed={WEB}, full=False)
    backend.flush_table("nat")  # someone flushed it meanwhile
    after = state({WEB: web(E1), DNS: dns(E1)})
    assert proxier.sync_blocking(after, changed=set(), full=False).full
    assert declared(backend.restored[-1]) >= SHARED
    assert backend.tables == full_sync_tables(after)


def test_render_leaves_out_the_shared_chains_whose_digest_is_unchanged() -> None:
    ports = {WEB: web(E1, E2)}
    first = render_iptables_ruleset(ports, missing_hooks=())
    same = render_iptables_ruleset(
        ports, skip={WEB}, programmed_shared=first.shared_digests, missing_hooks=()
    )
    assert same.text == "" and same.shared_digests == first.shared_digests
    gone = render_iptables_ruleset({}, programmed_shared=first.shared_digests, missing_hooks=())
    assert declared(gone.text) == {"KOPFLET-SERVICES", "KOPFLET-NODEPORTS"}
    assert "*filter" not in gone.text


@pytest.mark.parametrize("seed", range(8))
def test_partial_syncs_leave_what_a_full_sync_of_the_final_state_leaves(seed: int) -> None:
    def make() -> tuple[FakeIptablesBackend, IptablesProxier]:
        backend = FakeIptablesBackend()
        return backend, IptablesProxier(backend)

    backend = check_partial_syncs(seed, make, lambda b: b.tables, rounds=20)
    assert backend.save_calls == 2  # the first full sync only


def test_a_partial_sync_on_a_real_sized_ruleset_names_only_what_changed() -> None:
    ports = {
        ServicePortName("bulk", f"s{i}"): ServicePortInfo(
            cluster_ip=f"10.96.{i // 250}.{i % 250 + 1}",
            port=80,
            protocol="TCP",
            endpoints=tuple(
                EndpointInfo(f"10.{64 + j}.{i // 250}.{i % 250 + 1}", 8080) for j in range(10)
            ),
            node_port=30000 + i if i % 2 else None,
        )
        for i in range(500)
    }
    backend = FakeIptablesBackend()
    proxier = IptablesProxier(backend)
    proxier.sync_blocking(ProxyState(service_ports=ports), changed=set(), full=True)
    name = ServicePortName("bulk", "s7")
    info = ports[name]
    fewer = {**ports, name: replace(info, endpoints=info.endpoints[1:])}
    proxier.sync_blocking(ProxyState(service_ports=fewer), changed={name}, full=False)
    text = backend.restored[-1]
    # One SVC chain and ten SEP chains declared, their ~28 rules, one -X: nothing else.
    assert len(text.splitlines()) < 45
    assert "bulk/s7" in text and not re.search(r"bulk/s(?!7\b)", text)
    assert f"-X {endpoint_chain(name, 'TCP', info.endpoints[0])}" in text
