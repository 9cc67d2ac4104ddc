"""Choose a node for an Instance: filter, then score. Pure.

Filters, in order (a node is counted under the first that fails, and under every resource it
lacks): Ready, not unschedulable, nodeSelector matches the node's labels, requests fit the
node's allocatable minus what is already bound there. Scores: least allocated (CPU, memory and
instance slots, averaged) plus spreading one Workload's Instances over the nodes.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kopflet.api import NodeAgent, QuantityValue, cpu_millis, memory_bytes, parse_quantity
from kopflet.controller.instance_state import NodeName, Requests, node_is_ready

NOT_READY = "not ready"
UNSCHEDULABLE = "unschedulable"
SELECTOR_MISMATCH = "didn't match node selector"
INSUFFICIENT_CPU = "insufficient cpu"
INSUFFICIENT_MEMORY = "insufficient memory"
TOO_MANY_INSTANCES = "too many instances"


@dataclass(frozen=True)
class Capacity:
    """Allocatable resources of a node; ``None`` means the node does not limit it."""

    cpu_millis: int | None = None
    memory_bytes: int | None = None
    instances: int | None = None


@dataclass(frozen=True)
class NodeSnapshot:
    """A node as the scheduler sees it for one decision: what it offers, what is bound to it."""

    name: NodeName
    labels: Mapping[str, str]
    ready: bool
    unschedulable: bool
    allocatable: Capacity
    used: Requests = field(default_factory=lambda: Requests(0, 0, 0))
    #: Instances bound here per controlling Workload UID, for spreading.
    per_owner: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    node: NodeName | None
    #: Why each rejected node was rejected: reason -> number of nodes.
    reasons: Mapping[str, int]
    total_nodes: int

    @property
    def message(self) -> str:
        """``0/3 nodes available: 2 insufficient memory, 1 not ready``."""
        parts = sorted(self.reasons.items(), key=lambda item: (-item[1], item[0]))
        detail = ", ".join(f"{count} {reason}" for reason, count in parts)
        return f"0/{self.total_nodes} nodes available" + (f": {detail}" if detail else "")


def _quantity(values: Mapping[str, QuantityValue], name: str) -> int | None:
    value = values.get(name)
    if value is None:
        return None
    if name == "cpu":
        return cpu_millis(value)
    if name == "memory":
        return memory_bytes(value)
    return int(parse_quantity(value))


def capacity_of(node: NodeAgent) -> Capacity:
    status = node.status
    values = (status.allocatable or status.capacity or {}) if status else {}
    return Capacity(
        cpu_millis=_quantity(values, "cpu"),
        memory_bytes=_quantity(values, "memory"),
        instances=_quantity(values, "instances"),
    )


def snapshot_of(node: NodeAgent, *, used: Requests, per_owner: Mapping[str, int]) -> NodeSnapshot:
    return NodeSnapshot(
        name=NodeName(node.metadata.name or ""),
        labels=dict(node.metadata.labels or {}),
        ready=node_is_ready(node) and node.metadata.deletion_timestamp is None,
        unschedulable=bool(node.spec and node.spec.unschedulable),
        allocatable=capacity_of(node),
        used=used,
        per_owner=per_owner,
    )


def _misfits(node: NodeSnapshot, wanted: Requests) -> list[str]:
    cap, used = node.allocatable, node.used
    misses = []
    if cap.cpu_millis is not None and used.cpu_millis + wanted.cpu_millis > cap.cpu_millis:
        misses.append(INSUFFICIENT_CPU)
    if cap.memory_bytes is not None and used.memory_bytes + wanted.memory_bytes > cap.memory_bytes:
        misses.append(INSUFFICIENT_MEMORY)
    if cap.instances is not None and used.instances + wanted.instances > cap.instances:
        misses.append(TOO_MANY_INSTANCES)
    return misses


def _least_allocated(node: NodeSnapshot, wanted: Requests) -> float:
    cap, used = node.allocatable, node.used
    shares = [
        (total - taken - extra) / total
        for total, taken, extra in (
            (cap.cpu_millis, used.cpu_millis, wanted.cpu_millis),
            (cap.memory_bytes, used.memory_bytes, wanted.memory_bytes),
            (cap.instances, used.instances, wanted.instances),
        )
        if total
    ]
    return 100.0 * sum(shares) / len(shares) if shares else 100.0


def _tiebreak(seed: str, node: NodeName) -> str:
    # Equal scores go to a node picked by hash, so equal nodes share the load evenly.
    return hashlib.sha256(f"{seed}/{node}".encode()).hexdigest()


def choose_node(
    *,
    wanted: Requests,
    node_selector: Mapping[str, str] | None,
    owner_uid: str | None,
    nodes: Sequence[NodeSnapshot],
    seed: str,
) -> Decision:
    reasons: Counter[str] = Counter()
    feasible: list[NodeSnapshot] = []
    for node in nodes:
        if not node.ready:
            reasons[NOT_READY] += 1
        elif node.unschedulable:
            reasons[UNSCHEDULABLE] += 1
        elif any(node.labels.get(k) != v for k, v in (node_selector or {}).items()):
            reasons[SELECTOR_MISMATCH] += 1
        elif misses := _misfits(node, wanted):
            reasons.update(misses)
        else:
            feasible.append(node)
    if not feasible:
        return Decision(node=None, reasons=dict(reasons), total_nodes=len(nodes))
    counts = {n.name: n.per_owner.get(owner_uid, 0) if owner_uid else 0 for n in feasible}
    most = max(counts.values())

    def score(node: NodeSnapshot) -> tuple[float, str]:
        spread = 100.0 * (most - counts[node.name]) / most if most else 100.0
        return (-(_least_allocated(node, wanted) + spread), _tiebreak(seed, node.name))

    best = min(feasible, key=score)
    return Decision(node=best.name, reasons=dict(reasons), total_nodes=len(nodes))
