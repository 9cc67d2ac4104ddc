"""A Workload's status from its Instances: counts, and the Available and Progressing conditions.

Pure. ``metav1.Condition`` has no ``lastUpdateTime``, so the Progressing condition's
``lastTransitionTime`` is moved to the moment of the last progress while a rollout runs: the
progress deadline counts from there, as the core counts from the Deployment's lastUpdateTime.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from kopflet.api import (
    Condition,
    Instance,
    Workload,
    WorkloadStatus,
    find_condition,
    format_timestamp,
    parse_timestamp,
    set_condition,
)
from kopflet.api.constants import CONDITION_AVAILABLE, CONDITION_PROGRESSING
from kopflet.api.workload import DEFAULT_PROGRESS_DEADLINE_SECONDS
from kopflet.controller.instance_state import is_available, is_ready
from kopflet.controller.rollout import split_by_revision
from kopflet.controller.template_hash import TemplateHash

REASON_MINIMUM_AVAILABLE = "MinimumReplicasAvailable"
REASON_MINIMUM_UNAVAILABLE = "MinimumReplicasUnavailable"
REASON_REVISION_UPDATED = "RevisionUpdated"
REASON_REVISION_AVAILABLE = "NewRevisionAvailable"
REASON_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"


@dataclass(frozen=True)
class StatusEvent:
    type: str  # Normal | Warning
    reason: str
    note: str


@dataclass(frozen=True)
class StatusResult:
    status: WorkloadStatus
    events: tuple[StatusEvent, ...] = ()
    #: Seconds until the progress deadline expires, to look again then.
    requeue_after: float | None = None


def _put(conditions: tuple[Condition, ...], new: Condition) -> tuple[Condition, ...]:
    """Replace (or add) the condition with exactly the given fields, time included."""
    if any(c.type == new.type for c in conditions):
        return tuple(new if c.type == new.type else c for c in conditions)
    return (*conditions, new)


def _progressed(previous: WorkloadStatus | None, current: WorkloadStatus, generation: int) -> bool:
    if previous is None or previous.observed_generation != generation:
        return True  # a new spec: a new rollout starts its deadline now
    old_before = (previous.replicas or 0) - (previous.updated_replicas or 0)
    old_now = (current.replicas or 0) - (current.updated_replicas or 0)
    return (
        (current.updated_replicas or 0) > (previous.updated_replicas or 0)
        or (current.ready_replicas or 0) > (previous.ready_replicas or 0)
        or (current.available_replicas or 0) > (previous.available_replicas or 0)
        or old_now < old_before
    )


def compute_status(
    workload: Workload,
    instances: Sequence[Instance],
    *,
    revision: TemplateHash,
    now: datetime,
) -> StatusResult:
    spec = workload.spec
    name = workload.metadata.name or ""
    generation = workload.metadata.generation or 0
    desired = 1 if spec.replicas is None else spec.replicas
    min_ready = spec.min_ready_seconds or 0
    split = split_by_revision(instances, revision)
    active = (*split.current, *split.old)
    ready = sum(map(is_ready, active))
    available = sum(is_available(i, min_ready_seconds=min_ready, now=now) for i in active)
    previous = workload.status
    counts = WorkloadStatus(
        observed_generation=generation,
        replicas=len(active),
        ready_replicas=ready,
        available_replicas=available,
        updated_replicas=len(split.current),
        unavailable_replicas=max(0, desired - available),
        selector=spec.selector.to_selector_string(),
        ready_summary=f"{ready}/{desired}",
    )
    conditions = tuple(previous.conditions or ()) if previous else ()
    events: list[StatusEvent] = []
    stamp = format_timestamp(now)

    recreate = spec.strategy is not None and spec.strategy.type == "Recreate"
    max_unavailable = 0 if recreate else spec.rolling_limits()[1]
    enough = available >= desired - max_unavailable
    conditions = set_condition(
        conditions,
        Condition(
            type=CONDITION_AVAILABLE,
            status="True" if enough else "False",
            observed_generation=generation,
            reason=REASON_MINIMUM_AVAILABLE if enough else REASON_MINIMUM_UNAVAILABLE,
            message=(
                f"Workload has minimum availability: {available} of {desired} available"
                if enough
                else f"Workload does not have minimum availability: {available} of {desired}"
                f" available, {desired - max_unavailable} needed"
            ),
        ),
        now=now,
    )

    deadline = spec.progress_deadline_seconds or DEFAULT_PROGRESS_DEADLINE_SECONDS
    old = find_condition(conditions, CONDITION_PROGRESSING)
    complete = len(split.current) == desired == len(active) and available == desired
    requeue: float | None = None
    if complete:
        if old is None or old.reason != REASON_REVISION_AVAILABLE:
            events.append(
                StatusEvent(
                    type="Normal",
                    reason="RolloutComplete",
                    note=f"Revision {revision} is available: {available} of {desired} instances",
                )
            )
        conditions = set_condition(
            conditions,
            Condition(
                type=CONDITION_PROGRESSING,
                status="True",
                observed_generation=generation,
                reason=REASON_REVISION_AVAILABLE,
                message=f'Workload "{name}" has successfully progressed: revision {revision}'
                " is available",
            ),
            now=now,
        )
    elif old is None or _progressed(previous, counts, generation):
        conditions = _put(
            conditions,
            Condition(
                type=CONDITION_PROGRESSING,
                status="True",
                observed_generation=generation,
                last_transition_time=stamp,
                reason=REASON_REVISION_UPDATED,
                message=f'Workload "{name}" is progressing: revision {revision} has'
                f" {len(split.current)} of {desired} instances, {available} available",
            ),
        )
        requeue = float(deadline)
    elif old.status == "True" and old.reason != REASON_REVISION_AVAILABLE:
        since = parse_timestamp(old.last_transition_time or stamp)
        left = (since + timedelta(seconds=deadline) - now).total_seconds()
        if left <= 0:
            note = f'Workload "{name}" has timed out progressing: no progress for {deadline}s'
            conditions = _put(
                conditions,
                Condition(
                    type=CONDITION_PROGRESSING,
                    status="False",
                    observed_generation=generation,
                    last_transition_time=stamp,
                    reason=REASON_DEADLINE_EXCEEDED,
                    message=note,
                ),
            )
            events.append(StatusEvent(type="Warning", reason=REASON_DEADLINE_EXCEEDED, note=note))
        else:
            requeue = left
    status = WorkloadStatus(
        observed_generation=counts.observed_generation,
        replicas=counts.replicas,
        ready_replicas=counts.ready_replicas,
        available_replicas=counts.available_replicas,
        updated_replicas=counts.updated_replicas,
        unavailable_replicas=counts.unavailable_replicas,
        selector=counts.selector,
        ready_summary=counts.ready_summary,
        conditions=conditions,
    )
    return StatusResult(status=status, events=tuple(events), requeue_after=requeue)
