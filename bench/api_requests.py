"""Bench #7: API requests per Instance lifecycle (create -> Ready -> delete), and no-op writes.

Counted where no client can hide them: the API server's own ``apiserver_request_total``, read
before and after ``--count`` Instances are created, become Ready and are deleted on the bench
cluster. From the difference come off:

* the bench's own requests (its creates, one delete-collection, the watch's list), exactly;
* the idle background (Lease renewals, node status) at the rate measured, in the same run,
  over an idle window of the same length just before.

Watches are long-running and do not grow with Instances: they are left out. What remains is
what the controller and the agents (and kube-controller-manager, which has nothing to do with
Instances) sent per Instance.

A write that changes nothing does not reach the watch: the API server keeps the object (and
its resourceVersion) as it was. So every successful write to an Instance minus the changes the
bench's watch saw (MODIFIED and DELETED events, less the bench's own delete-collection) is a
request that changed nothing; so is every refused write (409 conflict, 404, 422). Target
(issue 8): report; no such request.

The API server counts a delete-collection under the verb ``DELETE`` (scope ``namespace``), not
``DELETECOLLECTION``: the bench's own is taken off under that name. (Taken off under the other
name, it used to show as one no-op write per burst.)

    python bench/api_requests.py --count 30 --repeat 3
"""

from __future__ import annotations

import argparse
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench_cluster import BenchCluster, InstanceWatch, wait_until
from bench_results import Reporter, Target, result_of

from kopflet.api.constants import GROUP, INSTANCE_PLURAL, VERSION

Key = tuple[str, str, str, str]  # verb, group, resource, subresource
_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_WRITES = {"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION"}
#: Watches are long-running: per connection, not per Instance.
_SKIPPED_VERBS = {"WATCH", "CONNECT"}


def request_counts(cluster: BenchCluster) -> tuple[Counter[Key], Counter[Key]]:
    """(every request, successful ones) so far, by verb, group, resource, subresource."""
    api = cluster.api
    response = api.call_api("GET", f"{api.configuration.host}/metrics")
    text = bytes(response.read()).decode()
    total: Counter[Key] = Counter()
    ok: Counter[Key] = Counter()
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        verb = labels.get("verb", "")
        if verb in _SKIPPED_VERBS:
            continue
        key = (
            verb,
            labels.get("group", ""),
            labels.get("resource", ""),
            labels.get("subresource", ""),
        )
        value = float(match["value"])
        total[key] += int(value)
        if labels.get("code", "").startswith("2"):
            ok[key] += int(value)
    return total, ok


def delta(after: Counter[Key], before: Counter[Key]) -> Counter[Key]:
    return Counter({k: after[k] - before[k] for k in after if after[k] - before[k] > 0})


def name_of(key: Key) -> str:
    verb, group, resource, subresource = key
    where = resource + (f"/{subresource}" if subresource else "")
    return f"{verb} {where}" if group in ("", GROUP) else f"{verb} {where}.{group}"


@dataclass
class Lifecycle:
    per_instance: list[float] = field(default_factory=list)
    instance_writes: list[float] = field(default_factory=list)
    noop_writes: list[float] = field(default_factory=list)
    refused_writes: list[float] = field(default_factory=list)
    breakdown: Counter[str] = field(default_factory=Counter)


def one_lifecycle(cluster: BenchCluster, count: int, result: Lifecycle) -> None:
    with cluster.namespace("bench-api") as namespace:
        # Idle window first, as long as the lifecycle is expected to take.
        idle_before, _ = request_counts(cluster)
        idle_started = time.monotonic()
        time.sleep(min(30.0, 10.0 + count / 3))
        idle_after, _ = request_counts(cluster)
        idle = delta(idle_after, idle_before)
        idle_seconds = time.monotonic() - idle_started

        before, before_ok = request_counts(cluster)
        started = time.monotonic()
        with InstanceWatch(cluster, namespace) as watch:
            names = [f"api-{i:03d}" for i in range(count)]
            cluster.create_instances(namespace, names)
            watch.wait_ready(names, timeout=120 + 2.0 * count)
            cluster.custom.delete_collection_namespaced_custom_object(
                GROUP, VERSION, namespace, INSTANCE_PLURAL
            )
            wait_until(
                lambda: all(n in watch.deleted_at for n in names),
                timeout=120 + count,
                what=f"{count} Instances deleted",
            )
            # Trailing writes (events, a last status) land within a couple of seconds.
            time.sleep(3)
            changes = watch.modified + watch.deleted
        after, after_ok = request_counts(cluster)
        seconds = time.monotonic() - started

    used = delta(after, before)
    # The bench's own: its creates, the delete-collection, the watch's initial list.
    own = Counter(
        {
            ("POST", GROUP, "instances", ""): count,
            # A delete-collection is counted as verb DELETE (scope namespace).
            ("DELETE", GROUP, "instances", ""): 1,
            ("LIST", GROUP, "instances", ""): 1,
        }
    )
    components: Counter[str] = Counter()
    for key, value in used.items():
        background = idle[key] * seconds / idle_seconds
        net = value - own[key] - background
        if net > 0.5:
            components[name_of(key)] += round(net)
    result.per_instance.append(sum(components.values()) / count)
    result.breakdown.update(components)

    ok = delta(after_ok, before_ok)
    instance_writes = sum(
        v - own[k]
        for k, v in ok.items()
        if k[0] in _WRITES and k[1] == GROUP and k[2] == "instances"
    )
    refused = sum(
        v - ok[k]
        for k, v in used.items()
        if k[0] in _WRITES and k[1] == GROUP and k[2] == "instances"
    )
    # The delete-collection changed every Instance once (deletionTimestamp or removal).
    noop = max(0, instance_writes - (changes - count))
    result.instance_writes.append(instance_writes / count)
    result.noop_writes.append(noop + refused)
    result.refused_writes.append(refused)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--results", type=Path, help="append JSON records here")
    args = parser.parse_args(argv)
    reporter = Reporter(args.results)
    cluster = BenchCluster()
    cluster.up()
    result = Lifecycle()
    for _ in range(args.repeat):
        one_lifecycle(cluster, args.count, result)
    top = ", ".join(
        f"{name} {value / (args.count * args.repeat):.1f}"
        for name, value in result.breakdown.most_common(8)
    )
    reporter.report(
        result_of(
            bench="7",
            case=f"API requests per Instance lifecycle, controller + agents, {args.count} at once",
            figure_name="requests per Instance",
            unit="req",
            per_run=result.per_instance,
            extra={"per Instance": top},
        )
    )
    reporter.report(
        result_of(
            bench="7",
            case=f"Instance writes that changed nothing, {args.count} Instances",
            figure_name="no-op or refused writes per lifecycle",
            unit="req",
            per_run=result.noop_writes,
            target=Target("none", 0.0),
            extra={
                "successful Instance writes per Instance": (
                    f"{sum(result.instance_writes) / len(result.instance_writes):.1f}"
                ),
                "of which refused (409, 404, 422)": (
                    f"{sum(result.refused_writes) / len(result.refused_writes):.1f} per burst"
                ),
            },
        )
    )


if __name__ == "__main__":
    main()
