"""iptables partial syncs against the real ``iptables-nft-restore`` in two bare namespaces:
random partial syncs, which leave unchanged shared chains out of the restore text, leave
the kernel as one full sync of the final state does."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import replace

import pytest
from proxy_netns import require_root_and_tools, run

from kopflet.agent.proxy.commands import CommandRunner
from kopflet.agent.proxy.iptables_proxier import IptablesProxier
from kopflet.agent.proxy.model import EndpointInfo, ServicePortInfo, ServicePortName
from kopflet.agent.proxy.netfilter_backend import IptablesBackend
from kopflet.agent.proxy.proxier import ProxyState

pytestmark = pytest.mark.integration


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    require_root_and_tools()
    pair = tuple(f"kopflet-ipt-{os.getpid() % 10000}-{n}" for n in ("a", "b"))
    for ns in pair:
        run("ip", "netns", "add", ns)
    try:
        yield pair[0], pair[1]
    finally:
        for ns in pair:
            run("ip", "netns", "del", ns, check=False)


def _saved(ns: str) -> list[str]:
    """Both tables as ``iptables-nft-save`` prints them, comparable across namespaces:
    chains sorted, rules in their chain's order, counters dropped."""
    lines: list[str] = []
    for table in ("filter", "nat"):
        text = run("nsenter", f"--net=/run/netns/{ns}", "iptables-nft-save", "-t", table)
        chains = sorted(ln.split(" [")[0] for ln in text.splitlines() if ln.startswith(":"))
        rules = [ln for ln in text.splitlines() if ln.startswith("-A ")]
        rules.sort(key=lambda r: r.split()[1])  # stable: per-chain order is kept
        lines += [f"*{table}", *chains, *rules]
    return lines


def test_iptables_partial_syncs_leave_the_kernel_as_a_full_sync_of_the_final_state(
    namespaces: tuple[str, str],
) -> None:
    rnd = random.Random(3)
    names = [ServicePortName("ns", f"svc-{i}") for i in range(8)]

    def info(i: int) -> ServicePortInfo:
        endpoints = tuple(
            sorted(
                EndpointInfo(f"10.244.{j}.{i + 1}", 8080)
                for j in rnd.sample(range(5), rnd.randint(0, 3))
            )
        )
        return ServicePortInfo(
            cluster_ip=f"10.96.0.{100 + i}",
            port=rnd.choice([80, 8080]),
            protocol=rnd.choice(["TCP", "UDP"]),
            endpoints=endpoints,
            node_port=rnd.choice([None, 30000 + i]),
            affinity_timeout=rnd.choice([None, 60]),
        )

    ports = {n: info(i) for i, n in enumerate(names)}
    cidrs: tuple[str, ...] = ("10.244.1.0/24",)
    ours, fresh_ns = namespaces
    proxier = IptablesProxier(IptablesBackend(variant="nft", runner=CommandRunner(netns=ours)))
    proxier.sync_blocking(ProxyState(service_ports=dict(ports)), changed=set(), full=True)
    for _ in range(12):
        changed = set(rnd.sample(names, 2))
        for name in changed:
            if rnd.random() < 0.2:
                ports.pop(name, None)
            elif name in ports and rnd.random() < 0.6:
                # Endpoints only: the shared chains stay out of the text.
                new = info(names.index(name))
                ports[name] = replace(ports[name], endpoints=new.endpoints)
            else:
                ports[name] = info(names.index(name))
        if rnd.random() < 0.3:
            cidrs = tuple(sorted(rnd.sample(["10.244.1.0/24", "10.244.2.0/24"], rnd.randint(1, 2))))
        outcome = proxier.sync_blocking(
            ProxyState(service_ports=dict(ports), instance_cidrs=cidrs), changed=changed, full=False
        )
        assert not outcome.full
    fresh = IptablesProxier(IptablesBackend(variant="nft", runner=CommandRunner(netns=fresh_ns)))
    fresh.sync_blocking(
        ProxyState(service_ports=dict(ports), instance_cidrs=cidrs), changed=set(), full=True
    )
    assert _saved(ours) == _saved(fresh_ns)
