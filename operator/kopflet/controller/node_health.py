"""Node lifecycle, decided: from how long a node's Lease has gone unrenewed and its Ready
condition, what to do about the node and the Instances bound to it. Pure.

Timeline of a node that stops renewing its Lease at T (defaults in brackets):

* T + grace period [40 s]: its NodeAgent is marked ``Ready=Unknown`` (reason NodeStatusUnknown);
* ``Ready=Unknown`` for the eviction timeout [30 s]: its Instances are deleted, so their
  Workloads create replacements on healthy nodes (terminating Instances no longer count as
  replicas);
* an agent that is alive and reports ``Ready=False`` (its engine is down) gets the longer
  not-ready eviction timeout [300 s, the core default toleration of ``not-ready``]: its
  containers may well be running, and an engine restart should not replace the whole node;
* an evicted Instance still held by the agent's finalizer, the eviction timeout after its
  deletion: the finalizer is removed, because an agent that is gone cannot remove it. An agent
  that comes back removes the containers of Instances that no longer exist.

The heartbeat age is measured on the controller's own clock from when it last saw the Lease
change, never from the timestamps inside it: node and controller clocks may disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from kopflet.api import Instance, NodeAgent, find_condition, parse_timestamp
from kopflet.api.constants import CONDITION_READY
from kopflet.controller.instance_state import AGENT_FINALIZER_PREFIX, is_terminating


@dataclass(frozen=True)
class NodeHealthPlan:
    #: Message of the ``Ready=Unknown`` condition to set, or ``None`` to leave it.
    mark_unknown: str | None = None
    evict: tuple[Instance, ...] = ()
    force_finalize: tuple[Instance, ...] = ()
    #: Seconds until the next deadline of this node (lease expiry, eviction, finalizer).
    requeue_after: float | None = None
    #: Why the node is considered not ready, for events: ``NodeStatusUnknown``, ``AgentNotReady``.
    not_ready_reason: str | None = None


def has_agent_finalizer(instance: Instance) -> bool:
    return any(f.startswith(AGENT_FINALIZER_PREFIX) for f in instance.metadata.finalizers or ())


def plan_node_health(
    node: NodeAgent,
    *,
    heartbeat_age: float,
    instances: Sequence[Instance],
    now: datetime,
    grace_period: float,
    eviction_timeout: float,
    not_ready_eviction_timeout: float | None = None,
) -> NodeHealthPlan:
    """``not_ready_eviction_timeout`` (default: ``eviction_timeout``) applies while the node's
    Lease is renewed but its agent reports it not Ready, ``eviction_timeout`` once it is
    unreachable (``Ready=Unknown``)."""
    waits: list[float] = []
    conditions = node.status.conditions if node.status else None
    ready = find_condition(conditions, CONDITION_READY)
    expired = heartbeat_age > grace_period
    mark_unknown = None
    if expired and (ready is None or ready.status != "Unknown"):
        mark_unknown = (
            f"Agent stopped renewing its Lease: no renewal seen for {heartbeat_age:.0f}s"
            f" (grace period {grace_period:.0f}s)"
        )
    if not expired:
        waits.append(grace_period - heartbeat_age)

    not_ready_since: datetime | None = None
    reason = None
    unreachable = mark_unknown is not None or (ready is not None and ready.status == "Unknown")
    if mark_unknown is not None:
        not_ready_since, reason = now, "NodeStatusUnknown"
    elif ready is None:
        created = node.metadata.creation_timestamp
        not_ready_since = parse_timestamp(created) if created else now
        reason = "NoReadyCondition"
    elif ready.status != "True":
        moment = ready.last_transition_time
        not_ready_since = parse_timestamp(moment) if moment else now
        reason = ready.reason or "NotReady"

    evict: list[Instance] = []
    finalize: list[Instance] = []
    if not_ready_since is not None:
        timeout = eviction_timeout
        if not unreachable and not_ready_eviction_timeout is not None:
            timeout = not_ready_eviction_timeout
        evict_at = not_ready_since + timedelta(seconds=timeout)
        live = [i for i in instances if not is_terminating(i)]
        if now >= evict_at:
            evict = live
            if any(has_agent_finalizer(i) for i in live):
                waits.append(eviction_timeout)  # their finalizers come due then
        elif live:
            waits.append((evict_at - now).total_seconds())
        for instance in instances:
            if not is_terminating(instance) or not has_agent_finalizer(instance):
                continue
            deleted = instance.metadata.deletion_timestamp
            assert deleted is not None
            grace = instance.metadata.deletion_grace_period_seconds or 0
            due = (
                parse_timestamp(deleted)
                - timedelta(seconds=grace)
                + timedelta(seconds=eviction_timeout)
            )
            if now >= due:
                finalize.append(instance)
            else:
                waits.append((due - now).total_seconds())
    return NodeHealthPlan(
        mark_unknown=mark_unknown,
        evict=tuple(evict),
        force_finalize=tuple(finalize),
        requeue_after=max(0.5, min(waits)) if waits else None,
        not_ready_reason=reason,
    )
