"""Bench #6: a node lost -> every Instance it ran Ready again on another node.

On the bench cluster: a Workload of ``--replicas`` (spread over the 3 nodes) is made Ready; then
the last node is cut off the cluster's bridge (its veth taken down: the agent can no longer renew
its Lease, its containers keep running unseen, as a node whose network died). The clock runs
from the cut until the Workload has as many Ready Instances as before, none of them on the lost
node. Then the link comes back; how long until the evicted Instances are gone and the node is
Ready again is printed too: it shows how soon an agent that was cut off notices what changed
meanwhile. The cluster is left as it was found.

The reference (issue 8): the controller's node grace period + eviction timeout (its defaults:
the local cluster passes no flags) + the Instance startup p99, measured in the same run from
the Workload's own Instances (first seen -> Ready). Target: failover <= that sum + 5 s.

    python bench/node_failover.py --replicas 30 --repeat 2
"""

from __future__ import annotations

import argparse
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_cluster import IMAGE, SLEEP_COMMAND, BenchCluster, InstanceWatch, wait_until
from bench_results import Reporter, Target, percentile, result_of

from kopflet.api.constants import GROUP, VERSION, WORKLOAD_PLURAL
from kopflet.controller.options import ControllerOptions

SLACK_SECONDS = 5.0
#: A cut-off agent may hold a dead watch connection until its read timeout (minutes).
CLEANUP_TIMEOUT = 480.0


def workload_object(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Workload",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {"name": "main", "image": IMAGE, "command": list(SLEEP_COMMAND)}
                    ],
                    "terminationGracePeriodSeconds": 1,
                },
            },
        },
    }


def set_link(cluster: BenchCluster, node_index: int, *, up: bool) -> None:
    link = cluster.config.node(node_index).veth_host
    subprocess.run(["ip", "link", "set", link, "up" if up else "down"], check=True)


def ready_elsewhere(watch: InstanceWatch, lost: str) -> set[str]:
    return {
        name
        for name, ready_at in watch.ready_at.items()
        if ready_at and name not in watch.deleted_at and watch.node_of.get(name) != lost
    }


@dataclass
class Failover:
    seconds: float
    #: From the link coming back to the lost node's evicted Instances being gone (their
    #: finalizer removed by the agent, or released by the controller while the node is down).
    cleanup_after_reconnect: float
    #: From the link coming back to the node's NodeAgent Ready again: how soon a cut-off agent
    #: notices that the controller marked it unknown.
    ready_after_reconnect: float
    moved: int


def one_failover(
    cluster: BenchCluster, replicas: int, first_seen_to_ready: list[float]
) -> Failover:
    victim = cluster.config.nodes
    lost = cluster.config.node(victim).name
    with cluster.namespace("bench-failover") as namespace, InstanceWatch(cluster, namespace) as w:
        name = f"fo-{uuid.uuid4().hex[:5]}"
        cluster.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, WORKLOAD_PLURAL, workload_object(name, replicas)
        )
        wait_until(
            lambda: len(w.ready_at) >= replicas,
            timeout=120 + 2.0 * replicas,
            what=f"{replicas} Instances of {name} Ready",
        )
        first_seen_to_ready.extend(w.ready_at[n] - w.first_seen[n] for n in list(w.ready_at))
        on_victim = [n for n in w.ready_at if w.node_of.get(n) == lost]
        if not on_victim:
            raise SystemExit(f"no Instance landed on {lost}: nothing would fail over")
        cut = time.monotonic()
        set_link(cluster, victim, up=False)
        try:
            wait_until(
                lambda: len(ready_elsewhere(w, lost)) >= replicas,
                timeout=300,
                what=f"{replicas} Instances Ready off {lost}",
                interval=0.2,
            )
            failover = time.monotonic() - cut
        finally:
            set_link(cluster, victim, up=True)
        reconnected = time.monotonic()
        print(f"  {len(on_victim)} Instances of {lost} Ready elsewhere after {failover:.1f} s")
        cluster.custom.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, WORKLOAD_PLURAL, name
        )
        # The evicted Instances wait for a finalizer: the agent's, or the controller's release.
        wait_until(
            lambda: all(n in w.deleted_at for n in on_victim),
            timeout=CLEANUP_TIMEOUT,
            what=f"the evicted Instances of {lost} removed after it came back",
            interval=0.5,
        )
        cleanup = max(w.deleted_at[n] for n in on_victim) - reconnected
        print(f"  the evicted ones were gone {cleanup:.1f} s after the link came back", flush=True)
    wait_until(
        lambda: lost in cluster.ready_nodes(),
        timeout=CLEANUP_TIMEOUT,
        what=f"{lost} Ready again",
        interval=1.0,
    )
    ready = time.monotonic() - reconnected
    print(f"  {lost} Ready again {ready:.1f} s after the link came back", flush=True)
    return Failover(
        seconds=failover,
        cleanup_after_reconnect=cleanup,
        ready_after_reconnect=ready,
        moved=len(on_victim),
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--results", type=Path, help="append JSON records here")
    args = parser.parse_args(argv)
    reporter = Reporter(args.results)
    cluster = BenchCluster()
    cluster.up()
    options = ControllerOptions()
    startup: list[float] = []
    runs = [one_failover(cluster, args.replicas, startup) for _ in range(args.repeat)]
    startup_p99 = percentile(startup, 0.99)
    reference = options.node_grace_period + options.eviction_timeout + startup_p99
    reporter.report(
        result_of(
            bench="6",
            case=f"node lost -> its Instances Ready elsewhere, {args.replicas} replicas",
            figure_name="failover",
            unit="s",
            per_run=[r.seconds for r in runs],
            baseline_name=(
                f"grace {options.node_grace_period:.0f} s + eviction"
                f" {options.eviction_timeout:.0f} s + startup p99 {startup_p99:.1f} s"
            ),
            baseline_per_run=[reference] * len(runs),
            target=Target(f"<= that sum + {SLACK_SECONDS:.0f} s", SLACK_SECONDS, on="overhead"),
            extra={
                "Instances moved": "/".join(str(r.moved) for r in runs),
                "after the link came back, evicted ones gone": "/".join(
                    f"{r.cleanup_after_reconnect:.0f} s" for r in runs
                ),
                "node Ready again": "/".join(f"{r.ready_after_reconnect:.0f} s" for r in runs),
            },
        )
    )


if __name__ == "__main__":
    main()
