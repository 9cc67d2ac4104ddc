"""An Instance's status from what the engine holds: phase, conditions, containerStatuses. Pure.

The single writer (the engine) computes this after every pass and patches ``/status``
only when the result differs from what it last wrote; everything that does not really
change (``lastTransitionTime`` of a steady condition, ``startTime``) is carried over from
the previous status so that equal states compare equal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kopflet.agent.runtime.clock import timestamp
from kopflet.agent.runtime.instance_actions import Waiting, should_restart
from kopflet.agent.runtime.labels import ContainerID
from kopflet.agent.runtime.records import ContainerRecord, ObservedInstance, RunState
from kopflet.api import (
    Condition,
    ContainerState,
    ContainerStateRunning,
    ContainerStateTerminated,
    ContainerStateWaiting,
    ContainerStatus,
    Instance,
    InstancePhase,
    InstanceStatus,
    set_condition,
)
from kopflet.api.constants import (
    CONDITION_CONTAINERS_READY,
    CONDITION_INITIALIZED,
    CONDITION_READY,
    CONDITION_SCHEDULED,
)

CONTAINER_CREATING = "ContainerCreating"
#: Bounds of a termination message taken from the container's log, as in the kubelet.
TERMINATION_MESSAGE_LINES = 80
TERMINATION_MESSAGE_BYTES = 2048


@dataclass(frozen=True, kw_only=True)
class StatusInputs:
    host_ip: str
    now: float
    waiting: Mapping[str, Waiting] = field(default_factory=dict)
    started: Callable[[ContainerID], bool] = lambda _cid: True
    ready: Callable[[ContainerID], bool] = lambda _cid: True
    #: Last log lines of terminated containers, by container id.
    messages: Mapping[ContainerID, str] = field(default_factory=dict)


def docker_id(cid: ContainerID) -> str:
    return f"docker://{cid}"


def termination_reason(record: ContainerRecord) -> str:
    if record.oom_killed:
        return "OOMKilled"
    if record.error:
        return "StartError"
    return "Completed" if record.exit_code == 0 else "Error"


def clip_message(text: str) -> str:
    tail = "\n".join(text.splitlines()[-TERMINATION_MESSAGE_LINES:])
    return tail.encode()[-TERMINATION_MESSAGE_BYTES:].decode("utf-8", errors="ignore")


def _terminated(record: ContainerRecord, inputs: StatusInputs) -> ContainerState:
    message = record.error or clip_message(inputs.messages.get(record.id, ""))
    return ContainerState(
        terminated=ContainerStateTerminated(
            exit_code=record.exit_code if record.exit_code is not None else 128,
            reason=termination_reason(record),
            message=message or None,
            started_at=timestamp(record.started_at) if record.started_at else None,
            finished_at=timestamp(record.finished_at) if record.finished_at else None,
            container_id=docker_id(record.id),
        )
    )


def _container_status(
    instance: Instance, name: str, observed: ObservedInstance, inputs: StatusInputs
) -> ContainerStatus:
    container = instance.spec.container_named(name)
    assert container is not None
    history = observed.history(name)
    latest = history[0] if history else None
    previous = next((r for r in history[1:] if r.state is RunState.EXITED), None)
    waiting = inputs.waiting.get(name)
    state: ContainerState
    last_state: ContainerState | None = None
    running = latest is not None and latest.state is RunState.RUNNING
    if running:
        assert latest is not None
        started = timestamp(latest.started_at) if latest.started_at else None
        state = ContainerState(running=ContainerStateRunning(started_at=started))
        last_state = _terminated(previous, inputs) if previous else None
    elif waiting is not None:
        state = ContainerState(
            waiting=ContainerStateWaiting(reason=waiting.reason, message=waiting.message or None)
        )
        if latest is not None and latest.state is RunState.EXITED:
            last_state = _terminated(latest, inputs)
        elif previous is not None:
            last_state = _terminated(previous, inputs)
    elif latest is not None and latest.state is RunState.EXITED:
        state = _terminated(latest, inputs)
        last_state = _terminated(previous, inputs) if previous else None
    else:
        state = ContainerState(waiting=ContainerStateWaiting(reason=CONTAINER_CREATING))
        last_state = _terminated(previous, inputs) if previous else None
    return ContainerStatus(
        name=name,
        ready=running and latest is not None and inputs.ready(latest.id),
        restart_count=latest.restart_count if latest else 0,
        image=container.image,
        state=state,
        last_state=last_state,
        started=running and latest is not None and inputs.started(latest.id),
        image_id=(latest.image_id or None) if latest else None,
        container_id=docker_id(latest.id) if latest else None,
        image_pull_policy=container.effective_image_pull_policy,
    )


def _phase(instance: Instance, observed: ObservedInstance) -> InstancePhase:
    policy = instance.spec.restart_policy or "Always"
    latest = [observed.latest(c.name) for c in instance.spec.containers]
    if latest and all(
        r is not None and r.state is RunState.EXITED and not should_restart(policy, r)
        for r in latest
    ):
        return "Succeeded" if all(r is not None and r.exit_code == 0 for r in latest) else "Failed"
    # Running once every container has run at least once (and may be restarting now).
    if latest and all(r is not None and r.started_at is not None for r in latest):
        return "Running"
    return "Pending"


def _summary(
    instance: Instance, phase: InstancePhase, statuses: tuple[ContainerStatus, ...]
) -> str:
    """What ``kubectl get`` prints in STATUS: a reason beats the phase."""
    if instance.metadata.deletion_timestamp is not None:
        return "Terminating"
    if phase == "Succeeded":
        return "Completed"
    for status in statuses:
        state = status.state
        if state is not None and state.waiting is not None and state.waiting.reason:
            return state.waiting.reason
    for status in statuses:
        state = status.state
        reason = state.terminated.reason if state and state.terminated else None
        if reason and reason != "Completed":
            return reason
    return phase


def compute_instance_status(
    instance: Instance,
    observed: ObservedInstance,
    inputs: StatusInputs,
    *,
    previous: InstanceStatus | None,
) -> InstanceStatus:
    statuses = tuple(
        _container_status(instance, c.name, observed, inputs) for c in instance.spec.containers
    )
    phase = _phase(instance, observed)
    unready = [s.name for s in statuses if not s.ready]
    moment = datetime.fromtimestamp(inputs.now, tz=UTC)
    generation = instance.metadata.generation
    if phase in ("Succeeded", "Failed"):
        ready = Condition(type=CONDITION_READY, status="False", reason="InstanceCompleted")
        containers_ready = Condition(
            type=CONDITION_CONTAINERS_READY, status="False", reason="InstanceCompleted"
        )
    elif unready:
        message = f"containers with unready status: [{' '.join(unready)}]"
        ready = Condition(
            type=CONDITION_READY, status="False", reason="ContainersNotReady", message=message
        )
        containers_ready = Condition(
            type=CONDITION_CONTAINERS_READY,
            status="False",
            reason="ContainersNotReady",
            message=message,
        )
    else:
        ready = Condition(type=CONDITION_READY, status="True")
        containers_ready = Condition(type=CONDITION_CONTAINERS_READY, status="True")
    conditions = previous.conditions if previous else None
    for condition in (
        Condition(type=CONDITION_SCHEDULED, status="True"),
        Condition(type=CONDITION_INITIALIZED, status="True"),
        containers_ready,
        ready,
    ):
        conditions = set_condition(conditions, condition, now=moment)
    ip = observed.instance_ip
    return InstanceStatus(
        phase=phase,
        reason=_summary(instance, phase, statuses),
        conditions=conditions,
        container_statuses=statuses,
        instance_ip=ip or (previous.instance_ip if previous else None),
        host_ip=inputs.host_ip or None,
        start_time=(previous.start_time if previous else None) or timestamp(inputs.now),
        restart_count=sum(s.restart_count for s in statuses),
        observed_generation=generation,
    )
