"""Plan one pass of a Workload: how many Instances of the current revision to create, which
Instances to delete. Pure: the caller re-reads the cluster, plans, acts, and plans again.

Every plan keeps the rollout bounds for the state it was computed from, counting only active
Instances (not terminating, not finished), as the core Deployment controller does:

* active Instances after the pass <= replicas + maxSurge;
* available Instances after the pass >= replicas - maxUnavailable (an available Instance is
  deleted only while the others keep the bound; new Instances start out unavailable).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from kopflet.api import Instance, Workload
from kopflet.api.constants import TEMPLATE_HASH_LABEL
from kopflet.controller.instance_state import (
    is_available,
    is_bound,
    is_finished,
    is_ready,
    is_terminating,
    ready_since,
)
from kopflet.controller.template_hash import TemplateHash, template_hash


@dataclass(frozen=True)
class RolloutPlan:
    revision: TemplateHash
    create: int
    #: Most deletable first; finished Instances are cleaned up without counting against bounds.
    delete: tuple[Instance, ...]
    #: Seconds until an Instance becomes available (``minReadySeconds``), to look again then.
    requeue_after: float | None = None


@dataclass(frozen=True)
class RevisionCounts:
    """The active Instances of a Workload, split by revision."""

    current: tuple[Instance, ...]
    old: tuple[Instance, ...]
    finished: tuple[Instance, ...]
    #: Instances of an old revision still being deleted (Recreate waits for them).
    old_terminating: tuple[Instance, ...]


def revision_of(instance: Instance) -> str | None:
    return (instance.metadata.labels or {}).get(TEMPLATE_HASH_LABEL)


def split_by_revision(instances: Sequence[Instance], revision: TemplateHash) -> RevisionCounts:
    current: list[Instance] = []
    old: list[Instance] = []
    finished: list[Instance] = []
    old_terminating: list[Instance] = []
    for instance in instances:
        is_current = revision_of(instance) == revision
        if is_terminating(instance):
            if not is_current:
                old_terminating.append(instance)
        elif is_finished(instance):
            finished.append(instance)
        else:
            (current if is_current else old).append(instance)
    return RevisionCounts(
        current=tuple(current),
        old=tuple(old),
        finished=tuple(finished),
        old_terminating=tuple(old_terminating),
    )


def deletion_order(instances: Sequence[Instance]) -> list[Instance]:
    """Most deletable first: unscheduled, then not running, then not ready, then newest."""
    newest_first = sorted(
        instances,
        key=lambda i: (i.metadata.creation_timestamp or "", i.metadata.name or ""),
        reverse=True,
    )
    return sorted(
        newest_first,
        key=lambda i: (
            is_bound(i),
            bool(i.status and i.status.phase == "Running"),
            is_ready(i),
        ),
    )


def _next_availability(
    instances: Sequence[Instance], *, min_ready_seconds: int, now: datetime
) -> float | None:
    """Seconds until the first ready-but-not-yet-available Instance becomes available."""
    if min_ready_seconds <= 0:
        return None
    waits = []
    for instance in instances:
        since = ready_since(instance)
        if since is None:
            continue
        due = since + timedelta(seconds=min_ready_seconds)
        if due > now:
            waits.append((due - now).total_seconds())
    return min(waits) if waits else None


def plan_rollout(
    workload: Workload, instances: Sequence[Instance], *, now: datetime
) -> RolloutPlan:
    spec = workload.spec
    revision = template_hash(spec.template)
    replicas = 1 if spec.replicas is None else spec.replicas
    min_ready = spec.min_ready_seconds or 0
    split = split_by_revision(instances, revision)
    requeue = _next_availability((*split.current, *split.old), min_ready_seconds=min_ready, now=now)
    cleanup = split.finished

    def plan(create: int, delete: Sequence[Instance]) -> RolloutPlan:
        return RolloutPlan(
            revision=revision, create=create, delete=(*cleanup, *delete), requeue_after=requeue
        )

    recreate = spec.strategy is not None and spec.strategy.type == "Recreate"
    if recreate and split.old:
        return plan(0, deletion_order(split.old))
    if recreate and split.old_terminating:
        return plan(0, ())  # the new revision starts only once the old one is gone
    if not split.old:
        surplus = len(split.current) - replicas
        if surplus >= 0:
            return plan(0, deletion_order(split.current)[:surplus])
        return plan(-surplus, ())

    max_surge, max_unavailable = spec.rolling_limits()
    active = len(split.current) + len(split.old)
    create = max(0, min(replicas - len(split.current), replicas + max_surge - active))

    def available(instance: Instance) -> bool:
        return is_available(instance, min_ready_seconds=min_ready, now=now)

    budget = sum(map(available, (*split.current, *split.old))) - (replicas - max_unavailable)
    delete: list[Instance] = []
    for instance in deletion_order(split.current)[: max(0, len(split.current) - replicas)]:
        if available(instance):
            if budget <= 0:
                continue
            budget -= 1
        delete.append(instance)
    # Unavailable old Instances hold up the rollout and count for nothing: always removable.
    for instance in deletion_order(split.old):
        if available(instance):
            if budget <= 0:
                continue
            budget -= 1
        delete.append(instance)
    return plan(create, delete)
