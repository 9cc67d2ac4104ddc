"""Bench #3: the agent's proxy sync, object in to rules programmed, against the bare tool.

For N service-ports x 10 endpoints (default N = 1,000 and 10,000; their instances spread over
1,000 nodes, the agent's own node one of them), in iptables and nftables mode, in a network
namespace of its own (no traffic, nothing else touched):

* full sync: ``ProxyEngine`` (the object the agent drives) told to resync fully, timed from the
  request to the end of ``sync_now()`` -- reading what is programmed, rendering every chain,
  one ``iptables-restore --noflush`` / ``nft -f`` (plus, in nftables mode, the small iptables
  forward chain);
* one-endpoint change: ``engine.on_service(old, new)`` with one endpoint gone, then
  ``sync_now()`` -- tracker, conversion of the object, partial render, apply.

The baseline is the bare tool applying the very texts our sync applied (recorded at the
command runner), one after another, timed the same way, in a namespace of its own that goes
through the same transactions as ours, interleaved with ours so that load on the shared
machine hits both alike. (Where a full sync of a big table fills new endpoint maps with one
``nft`` process a core at once, the bare tool applies those texts one by one.) Targets
(issue 8): full sync of 10,000 <= 2 s, one change <= 100 ms p99. Needs root.

    python bench/proxy_engine_sync.py --sizes 1000 10000 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_results import Reporter, Target, fmt, percentile, result_of

from kopflet.agent.proxy import CommandRunner, ProxyEngine, ProxyMetrics, SyncPolicy
from kopflet.agent.proxy.model import ProxyMode
from kopflet.api.constants import API_VERSION

ENDPOINTS_PER_SERVICE = 10
#: The first services are NodePort ones (kube-proxy's node-port rules are the costly part of
#: a real ruleset); the port range holds 2,768.
NODE_PORT_SERVICES = 2000
NAMESPACE = "bench"
#: The instances behind the endpoints, round-robin over this many nodes: at 10,000 x 10 each
#: node runs 100 (an agent takes at most 110, ``--max-instances``), at 1,000 x 10 it runs 10.
NODES = 1000
#: The node the agent runs as, one of ``NODES``: its own endpoints get nftables hairpin
#: entries. (Spread over three nodes, as this bench once did, put 40,000 instances on it.)
NODE = "node-1"

FULL_TARGET_SECONDS = 2.0
CHANGE_TARGET_SECONDS = 0.1


@dataclass(frozen=True)
class RecordingRunner(CommandRunner):
    """Runs like the agent's runner and keeps every command fed a ruleset on stdin, so the
    bare tool can be given exactly what our sync applied."""

    applied: list[tuple[tuple[str, ...], str]] = field(default_factory=list, compare=False)

    def run(
        self,
        args: Sequence[str],
        *,
        stdin: str | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess[str]:
        if stdin is not None:
            self.applied.append((tuple(args), stdin))
        return super().run(args, stdin=stdin, check=check, timeout=timeout)


def service_object(i: int, *, drop_endpoint: bool = False) -> dict[str, Any]:
    """ProxyService ``svc-i`` as the API server hands it to the agent, status included."""
    endpoints = [
        {
            "ip": f"10.{64 + j}.{i // 250}.{i % 250 + 1}",
            "ready": True,
            "instance": f"svc-{i}-{j}",
            "nodeName": f"node-{(i * ENDPOINTS_PER_SERVICE + j) % NODES + 1}",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }
        for j in range(ENDPOINTS_PER_SERVICE)
    ]
    if drop_endpoint:
        endpoints = endpoints[1:]
    node_port = i < NODE_PORT_SERVICES
    port: dict[str, Any] = {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}
    if node_port:
        port["nodePort"] = 30000 + i
    return {
        "apiVersion": API_VERSION,
        "kind": "ProxyService",
        "metadata": {"name": f"svc-{i}", "namespace": NAMESPACE, "uid": f"uid-{i}"},
        "spec": {
            "type": "NodePort" if node_port else "ClusterIP",
            "clusterIP": f"10.96.{i // 250}.{i % 250 + 1}",
            "selector": {"app": f"svc-{i}"},
            "ports": [port],
        },
        "status": {"endpoints": endpoints},
    }


def node_object() -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "NodeAgent",
        "metadata": {"name": NODE},
        "spec": {"instanceCIDR": "10.244.0.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": "172.31.255.10"}]},
    }


@dataclass
class CaseTimes:
    ours: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)


def replay(runner: CommandRunner, applied: Sequence[tuple[tuple[str, ...], str]]) -> float:
    started = time.perf_counter()
    for args, text in applied:
        runner.run(args, stdin=text)
    return time.perf_counter() - started


@dataclass
class ModeTimes:
    first: CaseTimes = field(default_factory=CaseTimes)
    full: CaseTimes = field(default_factory=CaseTimes)
    change: CaseTimes = field(default_factory=CaseTimes)


def fresh_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", name], check=True)


async def bench_mode(
    mode: ProxyMode, size: int, *, repeat: int, full_repeat: int, netns: str, bare_netns: str
) -> ModeTimes:
    runner = RecordingRunner(netns=netns, timeout=1800.0)
    # The bare tool's namespace goes through the same transactions as ours, in the same
    # order, so each timed text meets the table it met in ours.
    bare_runner = CommandRunner(netns=bare_netns, timeout=1800.0)
    engine = ProxyEngine(
        node_name=NODE,
        mode=mode,
        runner=runner,
        # Full syncs only when the bench asks: a 30 s timer would turn a timed partial sync
        # into a full one halfway through a 10,000-service run.
        policy=SyncPolicy(min_interval=0.0, full_period=24 * 3600.0, canary_interval=3600.0),
        metrics=ProxyMetrics(registry=None),
        conntrack=False,
    )
    times = ModeTimes()
    engine.on_node(None, node_object())
    before = [service_object(i) for i in range(size)]
    for obj in before:
        engine.on_service(None, obj)
    engine.mark_initial_lists_complete()

    async def timed_sync(case: CaseTimes, what: str) -> None:
        runner.applied.clear()
        started = time.perf_counter()
        ok = await engine.sync_now()
        case.ours.append(time.perf_counter() - started)
        if not ok:
            raise SystemExit(f"{mode}: {what} failed (see the log above)")
        case.bare.append(replay(bare_runner, list(runner.applied)))

    await timed_sync(times.first, "the first sync")
    for _ in range(full_repeat):
        engine.syncer.schedule.request_full()
        await timed_sync(times.full, "a full sync")
    old, new = before[0], service_object(0, drop_endpoint=True)
    for _ in range(repeat):
        engine.on_service(old, new)
        await timed_sync(times.change, "a partial sync")
        # The endpoint back (untimed), in both namespaces.
        runner.applied.clear()
        engine.on_service(new, old)
        if not await engine.sync_now():
            raise SystemExit(f"{mode}: a partial sync failed")
        replay(bare_runner, list(runner.applied))
    return times


def report(reporter: Reporter, *, mode: str, size: int, times: ModeTimes) -> None:
    label = f"{size:,} service-ports x {ENDPOINTS_PER_SERVICE}"
    tool = "iptables-restore" if mode == "iptables" else "nft -f"
    full_target = Target("<= 2 s at 10,000", FULL_TARGET_SECONDS) if size >= 10_000 else None
    for case, samples, target in (
        ("first full sync (nothing programmed yet)", times.first, full_target),
        ("full resync (everything programmed)", times.full, full_target),
        ("one-endpoint change", times.change, Target("<= 100 ms p99", CHANGE_TARGET_SECONDS)),
    ):
        if not samples.ours:
            continue
        reporter.report(
            result_of(
                bench="3",
                case=f"proxy {case}, {mode}, {label}",
                figure_name="p99",
                unit="s",
                # One repetition is one sync: p50/p99 are over the repetitions themselves.
                per_run=samples.ours,
                statistic="p99",
                baseline_name=f"bare {tool} of the same text, p99",
                baseline_per_run=samples.bare,
                target=target,
                extra={
                    "p50": fmt(percentile(samples.ours, 0.5), "s"),
                    "bare p50": fmt(percentile(samples.bare, 0.5), "s"),
                },
            )
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--modes", nargs="+", default=["iptables", "nftables"])
    parser.add_argument("--repeat", type=int, default=5, help="one-endpoint changes")
    parser.add_argument(
        "--full-repeat",
        type=int,
        help="full resyncs (default: --repeat); the first sync is always measured",
    )
    parser.add_argument("--results", type=Path, help="append JSON records here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("needs root (it makes a network namespace)")
    reporter = Reporter(args.results)
    for mode in args.modes:
        for size in args.sizes:
            netns = f"kopflet-bench-proxy-{os.getpid()}"
            bare_netns = f"{netns}-bare"
            fresh_netns(netns)
            fresh_netns(bare_netns)
            full_repeat = args.repeat if args.full_repeat is None else args.full_repeat
            try:
                times = asyncio.run(
                    bench_mode(
                        mode,
                        size,
                        repeat=args.repeat,
                        full_repeat=full_repeat,
                        netns=netns,
                        bare_netns=bare_netns,
                    )
                )
            finally:
                for name in (netns, bare_netns):
                    subprocess.run(["ip", "netns", "del", name], check=False)
            report(reporter, mode=mode, size=size, times=times)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
