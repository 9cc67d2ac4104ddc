"""The nftables proxier's bookkeeping with a recording backend: full syncs read the
table, partial ones trust the last sync, failures force a full one."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

import pytest
from proxy_states import check_partial_syncs

from kopflet.agent.proxy.fake_backend import FakeIptablesBackend, FakeNftBackend, NftTableState
from kopflet.agent.proxy.model import EndpointInfo, ServicePortInfo, ServicePortName
from kopflet.agent.proxy.netfilter_backend import NetfilterError
from kopflet.agent.proxy.nftables_proxier import NftablesProxier
from kopflet.agent.proxy.proxier import ProxyState

pytestmark = pytest.mark.unit

WEB = ServicePortName("default", "web", "http")
E1, E2 = EndpointInfo("10.244.1.2", 8080), EndpointInfo("10.244.2.2", 8080)


class RecordingNft:
    name = "nft-recording"

    def __init__(self, listing: str = "") -> None:
        self.listing = listing
        self.applied: list[str] = []
        self.saves = 0
        self.fail = False

    def restore(self, ruleset: str) -> None:
        if self.fail:
            self.fail = False
            raise NetfilterError("injected")
        self.applied.append(ruleset)

    def save(self, table: str) -> str:
        self.saves += 1
        return self.listing

    def list_chain(self, table: str, chain: str) -> list[str] | None:
        return None

    def rule_count(self, table: str, chain: str) -> int | None:
        return None

    def restore_each(self, rulesets: Sequence[str]) -> None:
        for ruleset in rulesets:
            self.restore(ruleset)


def state(*endpoints: EndpointInfo) -> ProxyState:
    info = ServicePortInfo(cluster_ip="10.96.0.10", port=80, protocol="TCP", endpoints=endpoints)
    return ProxyState(service_ports={WEB: info}, instance_cidrs=("10.244.1.0/24",))


def test_a_full_sync_deletes_chains_and_sets_nobody_needs_any_more() -> None:
    backend = RecordingNft(
        "table ip kopflet {\n\tset aff-OLD {\n\t}\n\tchain sep-OLD {\n\t}\n"
        "\tchain services {\n\t}\n\tmap service-ips {\n\t}\n}\n"
    )
    NftablesProxier(backend).sync_blocking(state(E1), changed=set(), full=True)
    text = backend.applied[-1]
    assert "delete chain ip kopflet sep-OLD" in text and "delete set ip kopflet aff-OLD" in text
    assert "delete chain ip kopflet services" not in text
    assert "delete map" not in text


def test_a_partial_sync_reads_nothing_and_deletes_the_removed_endpoints_entries() -> None:
    backend = RecordingNft()
    proxier = NftablesProxier(backend)
    proxier.sync_blocking(state(E1, E2), changed=set(), full=True)
    outcome = proxier.sync_blocking(state(E1), changed={WEB}, full=False)
    assert not outcome.full and backend.saves == 1
    text = backend.applied[-1]
    assert "delete element ip kopflet service-endpoints-tcp-g0 { 10.96.0.10 . 80 . 1 }" in text
    assert (
        "delete chain ip kopflet pick-tcp-2" in text and "add chain ip kopflet pick-tcp-1" in text
    )
    unchanged = proxier.sync_blocking(state(E1), changed=set(), full=False)
    assert "pick-tcp-1" not in backend.applied[-1] and "element" not in backend.applied[-1]
    assert unchanged.rules_programmed == outcome.rules_programmed


def test_after_a_failure_the_next_sync_is_full_even_if_asked_for_partial() -> None:
    backend = RecordingNft()
    proxier = NftablesProxier(backend)
    proxier.sync_blocking(state(E1), changed=set(), full=True)
    backend.fail = True
    with pytest.raises(NetfilterError):
        proxier.sync_blocking(state(E1, E2), changed={WEB}, full=False)
    assert proxier.sync_blocking(state(E1, E2), changed=set(), full=False).full
    assert backend.saves == 2


def test_forwarding_chain_goes_to_dockers_iptables_with_the_hook_checked_on_full_syncs() -> None:
    iptables = FakeIptablesBackend()
    proxier = NftablesProxier(RecordingNft(), forward_backend=iptables)
    proxier.sync_blocking(state(E1), changed=set(), full=True)
    proxier.sync_blocking(state(E1), changed=set(), full=True)
    assert iptables.rules("filter", "FORWARD") == [
        '-m comment --comment "kopflet forwarding rules" -j KOPFLET-FORWARD'
    ]
    assert any(
        "-d 10.244.1.0/24 -j ACCEPT" in r for r in iptables.rules("filter", "KOPFLET-FORWARD")
    )
    assert "nat" not in "".join(iptables.restored)
    # Partial syncs write it only when the instance subnets change.
    restores = len(iptables.restored)
    proxier.sync_blocking(state(E1, E2), changed={WEB}, full=False)
    assert len(iptables.restored) == restores
    wider = replace(state(E1), instance_cidrs=("10.244.1.0/24", "10.244.2.0/24"))
    proxier.sync_blocking(wider, changed=set(), full=False)
    assert len(iptables.restored) == restores + 1
    assert any(
        "-d 10.244.2.0/24 -j ACCEPT" in r for r in iptables.rules("filter", "KOPFLET-FORWARD")
    )


@pytest.mark.parametrize("seed", range(8))
def test_partial_syncs_leave_what_a_full_sync_of_the_final_state_leaves(seed: int) -> None:
    def make() -> tuple[FakeNftBackend, NftablesProxier]:
        backend = FakeNftBackend()
        return backend, NftablesProxier(backend)

    backend = check_partial_syncs(seed, make, lambda b: b.table, rounds=15)
    assert backend.save_calls == 1


def bulk(count: int, *, node_ports: bool = False) -> dict[ServicePortName, ServicePortInfo]:
    return {
        ServicePortName("bulk", f"s{i}"): ServicePortInfo(
            cluster_ip=f"10.96.{i // 250}.{i % 250 + 1}",
            port=80,
            protocol="TCP",
            endpoints=tuple(
                EndpointInfo(f"10.{64 + j}.{i // 250}.{i % 250 + 1}", 8080) for j in range(3)
            ),
            node_port=30000 + i if node_ports and i % 2 else None,
        )
        for i in range(count)
    }


def test_a_partial_sync_on_a_real_sized_table_names_only_what_changed() -> None:
    ports = bulk(500)
    backend = FakeNftBackend()
    proxier = NftablesProxier(backend)
    proxier.sync_blocking(ProxyState(service_ports=ports), changed=set(), full=True)
    name = ServicePortName("bulk", "s7")
    info = ports[name]
    fewer = {**ports, name: replace(info, endpoints=info.endpoints[:2])}
    proxier.sync_blocking(ProxyState(service_ports=fewer), changed={name}, full=False)
    text = backend.restored[-1]
    assert len(text.splitlines()) < 10  # one service-port: no fixed chain is rewritten
    named = set(re.findall(r"10\.\d+\.\d+\.\d+", text))
    assert named <= {info.cluster_ip, info.endpoints[2].ip}
    gone = f"{info.cluster_ip} . 80 . 2"
    assert f"delete element ip kopflet service-endpoints-tcp-g0 {{ {gone} }}" in text
    assert gone not in backend.table.maps["service-endpoints-tcp-g0"]
    assert backend.table.maps["service-ips"][f"{info.cluster_ip} . tcp . 80"] == "goto pick-tcp-2"
    assert backend.table.chains["pick-tcp-2"] and backend.table.chains["pick-tcp-3"]


def test_a_failed_partial_sync_makes_the_next_one_full_and_right() -> None:
    backend = FakeNftBackend()
    proxier = NftablesProxier(backend)
    proxier.sync_blocking(state(E1, E2), changed=set(), full=True)
    backend.fail_restores = 1
    with pytest.raises(NetfilterError):
        proxier.sync_blocking(state(E1), changed={WEB}, full=False)
    # Changed behind our back meanwhile: the full sync repairs it.
    backend.flush_table()
    assert proxier.sync_blocking(state(E1), changed=set(), full=False).full
    fresh = FakeNftBackend()
    NftablesProxier(fresh).sync_blocking(state(E1), changed=set(), full=True)
    assert backend.table == fresh.table


def test_the_count_of_what_is_programmed_follows_the_map_entries() -> None:
    proxier = NftablesProxier(RecordingNft())
    two = proxier.sync_blocking(state(E1, E2), changed=set(), full=True)
    one = proxier.sync_blocking(state(E1), changed={WEB}, full=False)
    # One endpoint's entry in service-endpoints-tcp and its hairpin entry; the shared
    # chain it goes to changes, its rule count doesn't.
    assert two.rules_programmed - one.rules_programmed == 2
    fresh = NftablesProxier(RecordingNft()).sync_blocking(state(E1), changed=set(), full=True)
    assert fresh.rules_programmed == one.rules_programmed


def _any_generation(table: NftTableState) -> NftTableState:
    """The table with the endpoint maps' generation taken out of every name."""

    def bare(text: str) -> str:
        return re.sub(r"-g\d+\b", "-g*", text)

    return NftTableState(
        exists=table.exists,
        chains={c: [bare(r) for r in rules] for c, rules in table.chains.items()},
        maps={bare(m): entries for m, entries in table.maps.items()},
        sets={bare(s): items for s, items in table.sets.items()},
    )


def test_a_big_table_is_filled_in_pieces_then_switched_over_in_one_transaction() -> None:
    ports = ProxyState(service_ports=bulk(500, node_ports=True), instance_cidrs=("10.244.1.0/24",))
    backend = FakeNftBackend()
    proxier = NftablesProxier(backend, fill_transactions=3, fill_min_entries=500)
    proxier.sync_blocking(ports, changed=set(), full=True)
    # 1,500 + 750 endpoint entries and 1,500 hairpin ones: three fills, then the rest.
    *fills, main = backend.restored
    assert len(fills) == 3
    assert all(
        " rule " not in f and "add element ip kopflet hairpin-endpoints-g0" in f for f in fills
    )
    for map_name in (
        "service-endpoints-tcp-g0",
        "nodeport-endpoints-tcp-g0",
        "hairpin-endpoints-g0",
    ):
        assert f"add element ip kopflet {map_name} " not in main
        assert f"flush map ip kopflet {map_name}" not in main
        assert f"flush set ip kopflet {map_name}" not in main
    assert "add element ip kopflet service-ips " in main
    one = FakeNftBackend()
    NftablesProxier(one, fill_transactions=1).sync_blocking(ports, changed=set(), full=True)
    assert len(one.restored) == 1
    assert backend.table == one.table
    # The next full sync fills generation 1 beside the live 0, then one transaction points
    # the rules at 1 and deletes 0.
    proxier.sync_blocking(ports, changed=set(), full=True)
    *fills, main = backend.restored[4:]
    assert len(fills) == 3 and all("-g1 " in f and "-g0" not in f for f in fills)
    assert "map @service-endpoints-tcp-g1" in main
    assert "delete map ip kopflet service-endpoints-tcp-g0" in main.splitlines()
    assert "delete set ip kopflet hairpin-endpoints-g0" in main.splitlines()
    assert not any(n.endswith("-g0") for n in [*backend.table.maps, *backend.table.sets])
    assert _any_generation(backend.table) == _any_generation(one.table)
    # Partial syncs write to the live generation.
    name = ServicePortName("bulk", "s1")
    info = ports.service_ports[name]
    fewer = replace(ports, service_ports={**ports.service_ports, name: replace(info, endpoints=())})
    proxier.sync_blocking(fewer, changed={name}, full=False)
    assert "delete element ip kopflet nodeport-endpoints-tcp-g1 {" in backend.restored[-1]
    fresh = FakeNftBackend()
    NftablesProxier(fresh, fill_transactions=1).sync_blocking(fewer, changed=set(), full=True)
    assert _any_generation(backend.table) == _any_generation(fresh.table)


def test_small_tables_and_failed_fills_take_one_transaction_and_the_next_sync_repairs() -> None:
    ports = ProxyState(service_ports=bulk(50, node_ports=True))
    backend = FakeNftBackend()
    # 150 + 75 + 150 entries: fewer than two fills' worth.
    NftablesProxier(backend, fill_transactions=4).sync_blocking(ports, changed=set(), full=True)
    assert len(backend.restored) == 1
    failing = FakeNftBackend()
    proxier = NftablesProxier(failing, fill_transactions=2, fill_min_entries=100)
    failing.fail_restores = 1
    with pytest.raises(NetfilterError):
        proxier.sync_blocking(ports, changed=set(), full=True)
    assert proxier.sync_blocking(ports, changed=set(), full=False).full
    assert failing.table == backend.table
