"""Benches #1, #2 and #5 (agent): Instance startup latency, burst throughput, agent memory.

On the bench cluster (3 nodes), for each count (default 30 and 300, i.e. up to 100 per node):

* ours: create ``count`` Instances (unbound: the controller's scheduler binds them) with
  ``--concurrency`` client threads; per Instance, the time from sending its create to seeing it
  Ready through a watch -- the Kubernetes pod-startup SLI; the burst's wall time from the first
  create to the last Ready is the throughput figure (#2);
* baseline, same run, same engines, same client concurrency: ``docker run -d`` of the same image
  and command (create + start through the Engine API, on a bridge network of its own so each
  container gets a veth as an instance does), per container from request to running, and the
  wall time of the whole burst. A bare ``docker run`` blocks, so the client's workers hold the
  rest of the burst back; our creates return at once and the Instances queue in the cluster.
  The baseline counted from its burst's start (as if all had been asked for at once) is printed
  next to it -- beyond the client's concurrency it is the baseline of the burst -- and the
  burst's wall time (#2) compares the two without that difference;
* for bursts larger than the client's concurrency, ours again as a **closed loop**: each client
  thread creates its next Instance when its last one is seen Ready, so ours keeps as many in
  flight as the bare client does, and created->Ready is the same interval as a bare
  ``docker run -d``'s request to running. The p50 overhead target is held there (and on the
  bursts up to the concurrency, where all are asked for at once on both sides).

After the largest burst is Ready, each agent's
RSS is read (#5); before the first burst, at 0 Instances.

Then, on the nodes still holding the largest burst, the **latency phase** of the Kubernetes
density test (ClusterLoader2's ``testing/density``: saturation pods first, then "latency pods"
created at a steady pace, 5 a second over 100+ nodes, whose startup latency is what the 5 s
SLO is checked against): ``--latency-count`` Instances created ``--latency-rate`` a second,
created->Ready p50/p99; baseline: ``docker run -d`` at the same pace on the engines holding the
bare burst.

Targets (issue 8): p99 <= 5 s at 100 Instances per node (the SLO, on the latency phase); p50
overhead over bare Docker <= 0.5 s (same number in flight: bursts up to the concurrency, the
closed loop, the latency phase); burst wall time <= 1.5 x bare;
agent RSS <= 100 MB at 100 Instances.

    python bench/instance_startup.py --counts 30 300 --repeat 3
"""

from __future__ import annotations

import argparse
import functools
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench_cluster import (
    BenchCluster,
    InstanceWatch,
    bare_docker_run,
    bare_docker_run_paced,
    cpu_seconds,
    machine_cpu_seconds,
    remove_bare,
    rss_bytes,
)
from bench_results import Reporter, Result, Summary, Target, fmt, percentile, result_of

MIB = 1024 * 1024
#: Issue 8's startup target, held where both sides have as many in flight.
P50_OVERHEAD = Target("p50 overhead <= 0.5 s", 0.5, on="overhead")
#: Latency-phase Instances: 9 a node over 3 nodes, which keeps 100 + 9 under an agent's 110.
LATENCY_COUNT = 27


@dataclass
class Runs:
    """Per-repetition figures of one count, ours and the baseline's."""

    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    #: created -> bound by the scheduler (the controller's share of the latency).
    bind_p50: list[float] = field(default_factory=list)
    bare_p50: list[float] = field(default_factory=list)
    bare_p99: list[float] = field(default_factory=list)
    bare_wall: list[float] = field(default_factory=list)
    #: The baseline counted from the start of its burst, as if every container had been asked
    #: for at once -- as our Instances are, which then queue inside the cluster, not the client.
    bare_burst_p50: list[float] = field(default_factory=list)
    bare_burst_p99: list[float] = field(default_factory=list)
    per_node: Counter[str] = field(default_factory=Counter)
    #: CPU seconds per Instance the agents (all nodes) and the controller used in a burst.
    agent_cpu: list[float] = field(default_factory=list)
    controller_cpu: list[float] = field(default_factory=list)
    #: The engines' own CPU seconds per Instance (two containers) and per bare container.
    dockerd_cpu: list[float] = field(default_factory=list)
    bare_dockerd_cpu: list[float] = field(default_factory=list)
    #: The API server and etcd together, per Instance.
    api_cpu: list[float] = field(default_factory=list)
    #: The whole machine (every core's non-idle time, /proc/stat), per Instance and per bare
    #: container: shims, runc, the kernel and everything else on the machine included.
    machine_cpu: list[float] = field(default_factory=list)
    bare_machine_cpu: list[float] = field(default_factory=list)
    agent_rss: list[float] = field(default_factory=list)
    #: The latency phase on the nodes holding the burst: ours and the baseline's.
    latency_p50: list[float] = field(default_factory=list)
    latency_p99: list[float] = field(default_factory=list)
    bare_latency_p50: list[float] = field(default_factory=list)
    bare_latency_p99: list[float] = field(default_factory=list)
    #: Ours as a client of blocking ``docker run``s goes: each of ``concurrency`` clients
    #: creates the next Instance when its last one is Ready (bursts larger than that only).
    closed_p50: list[float] = field(default_factory=list)
    closed_p99: list[float] = field(default_factory=list)
    closed_wall: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class LatencyPhase:
    count: int
    rate: float


def run_ours(
    cluster: BenchCluster,
    count: int,
    runs: Runs,
    *,
    sample_memory: bool,
    latency: LatencyPhase | None = None,
) -> None:
    with cluster.namespace("bench-startup") as namespace, InstanceWatch(cluster, namespace) as w:
        names = [f"i-{i:04d}" for i in range(count)]
        cpu_before = component_cpu(cluster)
        sent = cluster.create_instances(namespace, names)
        w.wait_ready(names, timeout=120 + 2.0 * count)
        used = cpu_used_since(cluster, cpu_before, count)
        runs.agent_cpu.append(used["agents"])
        runs.controller_cpu.append(used["controller"])
        runs.dockerd_cpu.append(used["dockerd"])
        runs.api_cpu.append(used["api"])
        runs.machine_cpu.append(used["machine"])
        p50, p99, wall = ready_figures(w, sent)
        runs.p50.append(p50)
        runs.p99.append(p99)
        runs.bind_p50.append(percentile([w.bound_at[n] - sent[n] for n in names], 0.5))
        runs.wall.append(wall)
        runs.per_node = Counter(w.node_of.get(n, "?") for n in names)
        if sample_memory:
            # Steady state, not the peak of the burst: what a node holding them keeps using.
            time.sleep(5)
            runs.agent_rss.append(max_agent_rss(cluster))
        if latency is not None:
            paced = [f"l-{i:04d}" for i in range(latency.count)]
            sent = cluster.create_instances_paced(namespace, paced, rate=latency.rate)
            w.wait_ready(paced, timeout=120 + 2.0 * latency.count)
            latencies = [w.ready_at[n] - sent[n] for n in paced]
            runs.latency_p50.append(percentile(latencies, 0.5))
            runs.latency_p99.append(percentile(latencies, 0.99))


def ready_figures(watch: InstanceWatch, sent: dict[str, float]) -> tuple[float, float, float]:
    """created->Ready p50 and p99 of the Instances ``sent``, and the wall time from the first
    create to the last Ready."""
    latencies = [watch.ready_at[n] - at for n, at in sent.items()]
    last = max(watch.ready_at[n] for n in sent)
    return percentile(latencies, 0.5), percentile(latencies, 0.99), last - min(sent.values())


def run_ours_closed_loop(cluster: BenchCluster, count: int, runs: Runs) -> None:
    """``count`` Instances from ``concurrency`` clients that each wait for their Instance to be
    Ready before creating the next: the same number in flight as the bare burst's clients keep,
    so created->Ready is measured as the bare ``docker run -d`` latency is."""
    with cluster.namespace("bench-closed") as namespace, InstanceWatch(cluster, namespace) as w:
        names = [f"c-{i:04d}" for i in range(count)]
        p50, p99, wall = ready_figures(w, cluster.create_instances(namespace, names, until_ready=w))
        runs.closed_p50.append(p50)
        runs.closed_p99.append(p99)
        runs.closed_wall.append(wall)


def run_bare(
    cluster: BenchCluster, count: int, runs: Runs, *, latency: LatencyPhase | None = None
) -> None:
    cpu_before = component_cpu(cluster)
    try:
        burst = bare_docker_run(cluster, count)
        used = cpu_used_since(cluster, cpu_before, count)
        runs.bare_dockerd_cpu.append(used["dockerd"])
        runs.bare_machine_cpu.append(used["machine"])
        if latency is not None:
            paced = bare_docker_run_paced(cluster, latency.count, rate=latency.rate, prefix="l")
            runs.bare_latency_p50.append(percentile(list(paced.values()), 0.5))
            runs.bare_latency_p99.append(percentile(list(paced.values()), 0.99))
    finally:
        remove_bare(cluster)
    runs.bare_p50.append(percentile(list(burst.latency.values()), 0.5))
    runs.bare_p99.append(percentile(list(burst.latency.values()), 0.99))
    runs.bare_burst_p50.append(percentile(list(burst.since_burst.values()), 0.5))
    runs.bare_burst_p99.append(percentile(list(burst.since_burst.values()), 0.99))
    runs.bare_wall.append(burst.wall)


def component_cpu(cluster: BenchCluster) -> dict[str, float]:
    """CPU seconds used so far by all agents together, the controller, all dockerds, the API
    server with etcd, and the whole machine."""

    def of(*names: str) -> float:
        return sum(
            cpu_seconds(pid) for name in names for pid in cluster.component_pids(name).values()
        )

    return {
        "agents": of("agent"),
        "controller": of("controller"),
        "dockerd": of("dockerd"),
        "api": of("kube-apiserver", "etcd"),
        "machine": machine_cpu_seconds(),
    }


def cpu_used_since(cluster: BenchCluster, before: dict[str, float], count: int) -> dict[str, float]:
    """CPU seconds each of :func:`component_cpu`'s parts used since ``before``, per item."""
    after = component_cpu(cluster)
    return {k: (after[k] - before[k]) / count for k in after}


def max_agent_rss(cluster: BenchCluster) -> float:
    pids = cluster.component_pids("agent")
    return max(rss_bytes(pid) for pid in pids.values()) / MIB


def startup_result(
    q: str,
    case: str,
    ours: list[float],
    baseline_name: str,
    baseline: list[float],
    *,
    target: Target | None,
    extra: Mapping[str, float | str] | None = None,
) -> Result:
    """One #1 line: created->Ready at quantile ``q`` against a bare baseline."""
    return result_of(
        bench="1",
        case=f"startup {q}, {case}",
        figure_name=f"created->Ready {q}",
        unit="s",
        per_run=ours,
        baseline_name=baseline_name,
        baseline_per_run=baseline,
        target=target,
        extra=dict(extra) if extra else None,
    )


def report(
    reporter: Reporter,
    cluster: BenchCluster,
    count: int,
    runs: Runs,
    latency: LatencyPhase | None = None,
) -> None:
    nodes = cluster.config.nodes
    per_node = count / nodes
    spread = "/".join(str(runs.per_node[n]) for n in sorted(runs.per_node))
    case = f"{count} Instances over {nodes} nodes ({spread}), concurrency {cluster.concurrency}"
    at_slo_density = per_node >= 100
    # Up to the client's concurrency, every Instance and every bare container is asked for at
    # once: the same number in flight, one latency against the other. Beyond it a bare `docker
    # run` blocks and the client queues the rest, while our creates return and the Instances
    # queue in the cluster: the burst then compares with the bare burst counted from its start,
    # and the target is held on the closed loop, where ours keeps the bare client's number in
    # flight.
    queued = count > cluster.concurrency
    for q, ours, bare, bare_queued in (
        ("p50", runs.p50, runs.bare_p50, runs.bare_burst_p50),
        ("p99", runs.p99, runs.bare_p99, runs.bare_burst_p99),
    ):
        per_request = ("bare docker run -d", bare)
        from_start = ("bare counted from its burst's start", bare_queued)
        (baseline_name, baseline), (other_name, other) = (
            (from_start, per_request) if queued else (per_request, from_start)
        )
        reporter.report(
            startup_result(
                q,
                case + (", all created at once" if queued else ""),
                ours,
                f"{baseline_name} {q}",
                baseline,
                # All at once is the density test's saturation phase: the SLO is held against
                # the latency phase below, the overhead where both sides have as many in flight.
                target=P50_OVERHEAD if q == "p50" and not queued else None,
                extra=(
                    {"of which created->bound p50": fmt(Summary.of(runs.bind_p50).median, "s")}
                    if q == "p50"
                    else {}
                )
                | {f"{other_name} {q}": fmt(Summary.of(other).median, "s")},
            )
        )
    if queued:
        for q, ours, bare, target in (
            ("p50", runs.closed_p50, runs.bare_p50, P50_OVERHEAD),
            ("p99", runs.closed_p99, runs.bare_p99, None),
        ):
            reporter.report(
                startup_result(
                    q,
                    f"{case}, each client creating its next Instance when its last is Ready"
                    " (as a client of blocking docker runs)",
                    ours,
                    f"bare docker run -d {q}",
                    bare,
                    target=target,
                    extra={
                        "wall time": fmt(Summary.of(runs.closed_wall).median, "s"),
                        "bare": fmt(Summary.of(runs.bare_wall).median, "s"),
                    },
                )
            )
    if latency is not None:
        phase = (
            f"latency phase, {latency.count} Instances created {latency.rate:g} a second on"
            f" {nodes} nodes holding {per_node:.0f} each (the density test's latency pods)"
        )
        for q, ours, bare, target in (
            ("p50", runs.latency_p50, runs.bare_latency_p50, P50_OVERHEAD),
            (
                "p99",
                runs.latency_p99,
                runs.bare_latency_p99,
                Target("p99 <= 5 s at 100 per node", 5.0) if at_slo_density else None,
            ),
        ):
            reporter.report(
                startup_result(
                    q,
                    phase,
                    ours,
                    f"bare docker run -d {q}, same pace, beside the bare burst",
                    bare,
                    target=target,
                )
            )
    reporter.report(
        result_of(
            bench="2",
            case=f"throughput, {case}, zero to all Ready",
            figure_name="wall time",
            unit="s",
            per_run=runs.wall,
            baseline_name="bare parallel docker run",
            baseline_per_run=runs.bare_wall,
            target=Target("ratio <= 1.5", 1.5, on="ratio") if count >= 300 else None,
            extra={
                "ours": f"{count / max(min(runs.wall), 1e-9):.1f} Instances/s at best",
                "bare": f"{count / max(min(runs.bare_wall), 1e-9):.1f} containers/s at best",
                "CPU per Instance": (
                    f"machine {ms(runs.machine_cpu)}, of which"
                    f" agents {ms(runs.agent_cpu)},"
                    f" controller {ms(runs.controller_cpu)},"
                    f" API server + etcd {ms(runs.api_cpu)},"
                    f" dockerd {ms(runs.dockerd_cpu)}"
                    f" (bare, per container: machine {ms(runs.bare_machine_cpu)},"
                    f" dockerd {ms(runs.bare_dockerd_cpu)})"
                ),
            },
        )
    )


def ms(values: list[float]) -> str:
    """The median of CPU seconds, in ms."""
    return f"{Summary.of(values).median * 1000:.0f} ms"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[30, 300])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--repeat-small",
        type=int,
        help="repetitions of the bursts smaller than the largest (default: --repeat); they are"
        " cheap and their medians swing most with the machine's load",
    )
    parser.add_argument("--concurrency", type=int, default=30)
    parser.add_argument("--latency-count", type=int, default=LATENCY_COUNT)
    parser.add_argument("--latency-rate", type=float, default=1.0, help="Instances a second")
    parser.add_argument("--results", type=Path, help="append JSON records here")
    args = parser.parse_args(argv)
    reporter = Reporter(args.results)
    cluster = BenchCluster(concurrency=args.concurrency)
    cluster.up()
    idle_rss = [max_agent_rss(cluster)]
    # Untimed: the first container on an engine and the first network attach cost extra.
    run_bare(cluster, cluster.config.nodes, Runs())
    run_ours(cluster, cluster.config.nodes, Runs(), sample_memory=False)
    largest = max(args.counts)
    all_runs: dict[int, Runs] = {}
    for count in args.counts:
        runs = all_runs[count] = Runs()
        with_latency = count == largest and args.latency_count > 0
        latency = LatencyPhase(args.latency_count, args.latency_rate) if with_latency else None
        repeat = args.repeat if count == largest or args.repeat_small is None else args.repeat_small
        sides = [
            functools.partial(run_bare, cluster, count, runs, latency=latency),
            functools.partial(
                run_ours, cluster, count, runs, sample_memory=count == largest, latency=latency
            ),
        ]
        if count > cluster.concurrency:
            sides.append(functools.partial(run_ours_closed_loop, cluster, count, runs))
        for rep in range(repeat):
            # Alternate which side goes first, so drifting load on the shared machine does
            # not always favour the same one.
            for side in sides if rep % 2 == 0 else reversed(sides):
                side()
        report(reporter, cluster, count, runs, latency)
    per_node = largest // cluster.config.nodes
    reporter.note(
        "5",
        "agent RSS at 300 Instances on one node: not measured -- an agent takes at most 110"
        " (--max-instances, the kubelet's default), which the local cluster does not change",
    )
    for label, values, target in (
        ("0 Instances", idle_rss, None),
        (
            f"{per_node} Instances per node",
            all_runs[largest].agent_rss,
            Target("<= 100 MB at 100", 100e6 / MIB) if per_node >= 100 else None,
        ),
    ):
        reporter.report(
            result_of(
                bench="5",
                case=f"agent RSS (largest of {cluster.config.nodes} agents), {label}",
                figure_name="RSS",
                unit="MiB",
                per_run=values,
                target=target,
            )
        )


if __name__ == "__main__":
    main()
