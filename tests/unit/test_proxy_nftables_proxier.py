"""The nftables proxier's bookkeeping with a recording backend: full syncs read the
table, partial ones trust the last sync, failures force a full one."""

from __future__ import annotations

import pytest

from kopflet.agent.proxy.chain_names import nft_endpoint_chain, nft_service_chain
from kopflet.agent.proxy.fake_backend import FakeIptablesBackend
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


def test_a_partial_sync_reads_nothing_and_deletes_the_removed_endpoints_chain() -> None:
    backend = RecordingNft()
    proxier = NftablesProxier(backend)
    proxier.sync_blocking(state(E1, E2), changed=set(), full=True)
    outcome = proxier.sync_blocking(state(E1), changed={WEB}, full=False)
    assert not outcome.full and backend.saves == 1
    assert f"delete chain ip kopflet {nft_endpoint_chain(WEB, 'TCP', E2)}" in backend.applied[-1]
    unchanged = proxier.sync_blocking(state(E1), changed=set(), full=False)
    assert f"add chain ip kopflet {nft_service_chain(WEB, 'TCP')}" not in backend.applied[-1]
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
