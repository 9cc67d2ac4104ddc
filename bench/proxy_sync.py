"""Proxy sync benchmark: our full and partial syncs against the bare tool, same rules, same run.

For N service-ports x 10 endpoints (default N = 1,000 and 10,000), in iptables and in
nftables mode, inside a network namespace of its own:

* full sync: render + read what's programmed + one ``iptables-restore --noflush`` /
  ``nft -f`` (what the agent does every 30 s), against the bare tool applying the very
  text we rendered;
* one-endpoint change: a partial sync after one service-port lost an endpoint, against
  the bare tool applying that partial text.

Prints p50/p99 per case and the ratio ours/bare. Needs root. Not a test: nothing is
asserted. ``python bench/proxy_sync.py --sizes 1000 --repeat 5``.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import time
from collections.abc import Callable

from kopflet.agent.proxy.commands import CommandRunner
from kopflet.agent.proxy.iptables_proxier import IptablesProxier
from kopflet.agent.proxy.model import EndpointInfo, ServicePortInfo, ServicePortName
from kopflet.agent.proxy.netfilter_backend import (
    IptablesBackend,
    NetfilterBackend,
    NftablesBackend,
)
from kopflet.agent.proxy.nftables_proxier import NftablesProxier
from kopflet.agent.proxy.proxier import ProxyState

ENDPOINTS_PER_SERVICE = 10


def make_state(size: int, *, drop_one: bool = False) -> ProxyState:
    ports = {}
    for i in range(size):
        endpoints = tuple(
            EndpointInfo(f"10.{64 + j}.{i // 250}.{i % 250 + 1}", 8080)
            for j in range(ENDPOINTS_PER_SERVICE)
        )
        if drop_one and i == 0:
            endpoints = endpoints[1:]
        ports[ServicePortName("bench", f"svc-{i}", "http")] = ServicePortInfo(
            cluster_ip=f"10.96.{i // 250}.{i % 250 + 1}",
            port=80,
            protocol="TCP",
            endpoints=endpoints,
            node_port=30000 + i % 2000 if i < 2000 else None,
        )
    return ProxyState(service_ports=ports, instance_cidrs=("10.64.0.0/16",))


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


class RecordingBackend:
    """Passes everything through and keeps the texts, so the bare tool gets the same."""

    def __init__(self, inner: NetfilterBackend) -> None:
        self.inner = inner
        self.texts: list[str] = []

    @property
    def name(self) -> str:
        return self.inner.name

    def restore(self, ruleset: str) -> None:
        self.texts.append(ruleset)
        self.inner.restore(ruleset)

    def save(self, table: str) -> str:
        return self.inner.save(table)

    def list_chain(self, table: str, chain: str) -> list[str] | None:
        return self.inner.list_chain(table, chain)

    def rule_count(self, table: str, chain: str) -> int | None:
        return None  # the canary is not checked here


def bench_mode(mode: str, size: int, repeat: int, runner: CommandRunner) -> list[str]:
    proxier: IptablesProxier | NftablesProxier
    if mode == "iptables":
        recording = RecordingBackend(IptablesBackend(variant="nft", runner=runner))
        proxier = IptablesProxier(recording)
        bare = ["iptables-nft-restore", "--noflush"]
    else:
        recording = RecordingBackend(NftablesBackend(runner))
        proxier = NftablesProxier(recording)
        bare = ["nft", "-f", "-"]
    before, after = make_state(size), make_state(size, drop_one=True)
    changed = {ServicePortName("bench", "svc-0", "http")}
    rendered = recording.texts
    rows = []
    full, full_bare, partial, partial_bare = [], [], [], []
    for _ in range(repeat):
        full.append(timed(lambda: proxier.sync_blocking(before, changed=set(), full=True)))
        full_bare.append(timed(functools.partial(runner.run, bare, stdin=rendered[-1])))
        partial.append(timed(lambda: proxier.sync_blocking(after, changed=changed, full=False)))
        text = rendered[-1]
        # Put the endpoint back (untimed), then time the bare tool on the same partial text.
        proxier.sync_blocking(before, changed=changed, full=False)
        partial_bare.append(timed(functools.partial(runner.run, bare, stdin=text)))
        proxier.sync_blocking(before, changed=changed, full=False)
    for name, ours, theirs in (
        ("full sync", full, full_bare),
        ("one-endpoint change", partial, partial_bare),
    ):
        p50, p99 = statistics.median(ours), percentile(ours, 0.99)
        b50, b99 = statistics.median(theirs), percentile(theirs, 0.99)
        rows.append(
            f"{mode:9} {size:>6} x{ENDPOINTS_PER_SERVICE} {name:20}"
            f" p50 {p50 * 1000:9.1f} ms  p99 {p99 * 1000:9.1f} ms |"
            f" bare p50 {b50 * 1000:9.1f} ms  p99 {b99 * 1000:9.1f} ms |"
            f" ratio p50 {p50 / b50:5.2f}"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--modes", nargs="+", default=["iptables", "nftables"])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (it creates a network namespace)")
    print(f"{'mode':9} {'size':>6} {'':3} {'case':20}")
    for mode in args.modes:
        for size in args.sizes:
            netns = f"kopflet-pbench-{os.getpid()}"
            subprocess.run(["ip", "netns", "add", netns], check=True)
            try:
                for row in bench_mode(mode, size, args.repeat, CommandRunner(netns=netns)):
                    print(row, flush=True)
            finally:
                subprocess.run(["ip", "netns", "del", netns], check=False)


if __name__ == "__main__":
    main()
