"""Decide, don't act: what one instance's containers need, as plain data (computePodActions).

``plan_instance_actions(desired, observed, ...)`` is pure. It reads the Instance (or its
absence), the containers the engine holds for it, the back-off table and the probe
verdicts, and returns :class:`InstanceActions`; ``sync_instance`` performs them in
order: stop, remove, create the sandbox, start containers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from kopflet.agent.runtime.backoff import (
    BackoffEntry,
    BackoffPolicy,
    in_backoff,
    next_entry,
    retry_at,
)
from kopflet.agent.runtime.labels import ContainerID
from kopflet.agent.runtime.records import ContainerRecord, ObservedInstance, RunState
from kopflet.agent.runtime.spec_hash import container_spec_hash, sandbox_spec_hash, solo_spec_hash
from kopflet.api import UID, Instance, InstanceSpec
from kopflet.api.instance import DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS

#: Back-off is per (instance, container name, container spec hash): a new spec starts over.
CrashKey = tuple[UID, str, str]

CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"


class KillReason(StrEnum):
    INSTANCE_GONE = "InstanceGone"
    BOUND_ELSEWHERE = "BoundElsewhere"
    DELETING = "Deleting"
    SPEC_CHANGED = "SpecChanged"
    LIVENESS_FAILED = "LivenessProbeFailed"
    STARTUP_FAILED = "StartupProbeFailed"
    SANDBOX_CHANGED = "SandboxChanged"
    #: A second running container for one spec container (an interrupted pass).
    DUPLICATE = "Duplicate"
    #: Every container has terminated for good: the sandbox has nothing left to hold.
    COMPLETED = "Completed"
    #: A container name the spec no longer has.
    UNKNOWN_CONTAINER = "UnknownContainer"


@dataclass(frozen=True, kw_only=True)
class ContainerStop:
    id: ContainerID
    name: str
    sandbox: bool
    reason: KillReason
    message: str
    grace_seconds: int


@dataclass(frozen=True, kw_only=True)
class ContainerStart:
    name: str
    restart_count: int
    message: str
    #: Written to the back-off table once the container was started.
    backoff: tuple[CrashKey, BackoffEntry] | None = None


@dataclass(frozen=True, kw_only=True)
class SandboxCreate:
    restart_count: int
    spec_hash: str
    message: str


@dataclass(frozen=True, kw_only=True)
class Waiting:
    name: str
    reason: str
    message: str


@dataclass(frozen=True, kw_only=True)
class ProbeVerdict:
    """A probe that condemned a running container: kill it (and maybe restart it)."""

    reason: KillReason
    message: str


@dataclass(frozen=True, kw_only=True)
class InstanceActions:
    #: Stopped first (app containers, then sandboxes), each with its own grace period.
    stop: tuple[ContainerStop, ...] = ()
    #: Removed after the stops: superseded history, interrupted creates, torn-down instances.
    remove: tuple[ContainerID, ...] = ()
    create_sandbox: SandboxCreate | None = None
    start: tuple[ContainerStart, ...] = ()
    waiting: tuple[Waiting, ...] = ()
    #: The instance is gone (or leaving) and the engine holds nothing of it any more.
    cleaned_up: bool = False
    #: Every container terminated and none will restart: a Succeeded/Failed phase.
    completed: bool = False
    #: When a back-off expires: sync again then, even if nothing else happens.
    wake_at: float | None = None
    #: The instance has no sandbox: its one container holds the network itself.
    without_sandbox: bool = False

    @property
    def is_empty(self) -> bool:
        return not (self.stop or self.remove or self.create_sandbox or self.start)


@dataclass(frozen=True, kw_only=True)
class PlanContext:
    node: str
    now: float
    policy: BackoffPolicy = field(default_factory=BackoffPolicy)
    backoff: Callable[[CrashKey], BackoffEntry | None] = lambda _key: None
    verdicts: Mapping[ContainerID, ProbeVerdict] = field(default_factory=dict)


def _stop(record: ContainerRecord, reason: KillReason, message: str, grace: int) -> ContainerStop:
    return ContainerStop(
        id=record.id,
        name=record.name,
        sandbox=record.is_sandbox,
        reason=reason,
        message=message,
        grace_seconds=grace,
    )


def _running(record: ContainerRecord) -> bool:
    return record.state is RunState.RUNNING


def plan_teardown(
    observed: ObservedInstance, *, reason: KillReason, grace: int | None
) -> InstanceActions:
    """Stop and remove everything; ``grace`` None means each container's own label."""
    if not observed.all:
        return InstanceActions(cleaned_up=True)
    stops = tuple(
        _stop(
            r,
            reason,
            f"Stopping {r.name or 'sandbox'}: {reason.value}",
            r.labels.grace_period_seconds if grace is None else grace,
        )
        for r in observed.all
        if _running(r)
    )
    return InstanceActions(stop=stops, remove=tuple(r.id for r in observed.all))


def _grace_of(instance: Instance) -> int:
    meta, spec = instance.metadata, instance.spec
    if meta.deletion_grace_period_seconds is not None:
        return meta.deletion_grace_period_seconds
    if spec.termination_grace_period_seconds is not None:
        return spec.termination_grace_period_seconds
    return DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS


def should_restart(policy: str, record: ContainerRecord) -> bool:
    if policy == "Always":
        return True
    if policy == "OnFailure":
        return record.exit_code != 0
    return False


def plan_instance_actions(
    desired: Instance | None, observed: ObservedInstance, context: PlanContext
) -> InstanceActions:
    if desired is None:
        return plan_teardown(observed, reason=KillReason.INSTANCE_GONE, grace=None)
    if desired.spec.node_name != context.node:
        return plan_teardown(observed, reason=KillReason.BOUND_ELSEWHERE, grace=None)
    if desired.metadata.deletion_timestamp is not None:
        return plan_teardown(observed, reason=KillReason.DELETING, grace=_grace_of(desired))
    return _plan_running_instance(desired, observed, context)


def runs_without_sandbox(spec: InstanceSpec, observed: ObservedInstance) -> bool:
    """One container needs no sandbox: it holds the instance's network itself, and the
    engine runs one container, not two, for it. An instance that has a sandbox already
    (made by an older agent, or while it had more containers) keeps it."""
    return len(spec.containers) == 1 and not observed.sandboxes


def expected_spec_hash(desired: Instance, name: str, *, without_sandbox: bool) -> str:
    """The spec hash label a current container of ``name`` carries."""
    container = desired.spec.container_named(name)
    assert container is not None
    if without_sandbox:
        return solo_spec_hash(container, desired.spec, instance_name=desired.metadata.name or "")
    return container_spec_hash(container)


def _plan_running_instance(
    desired: Instance, observed: ObservedInstance, context: PlanContext
) -> InstanceActions:
    uid = observed.uid
    spec = desired.spec
    policy = spec.restart_policy or "Always"
    grace = _grace_of(desired)
    wanted = {c.name: c for c in spec.containers}
    stops: list[ContainerStop] = []
    removes: list[ContainerID] = []

    # Containers the spec does not name, duplicates and old history go first, whatever
    # else this pass decides.
    for record in observed.containers:
        if record.name not in wanted:
            if _running(record):
                stops.append(_stop(record, KillReason.UNKNOWN_CONTAINER, "not in spec", grace))
            removes.append(record.id)
    for name in wanted:
        history = observed.history(name)
        for record in history[1:]:
            if _running(record):
                stops.append(_stop(record, KillReason.DUPLICATE, "superseded", grace))
        # The newest and the one before it make restartCount and lastState; older go.
        removes.extend(r.id for r in history[2:])
        removes.extend(r.id for r in history[1:2] if _running(r))

    for old in observed.sandboxes[1:]:
        if _running(old):
            stops.append(_stop(old, KillReason.SANDBOX_CHANGED, "superseded sandbox", 0))
        removes.append(old.id)

    finished = bool(spec.containers) and all(
        (latest := observed.latest(c.name)) is not None
        and latest.state is RunState.EXITED
        and not should_restart(policy, latest)
        for c in spec.containers
    )
    sandbox = observed.latest_sandbox
    if finished:
        if sandbox is not None and _running(sandbox):
            stops.append(_stop(sandbox, KillReason.COMPLETED, "all containers terminated", 0))
        return InstanceActions(stop=tuple(stops), remove=tuple(removes), completed=True)

    solo = runs_without_sandbox(spec, observed)
    if not solo:
        sandbox_hash = sandbox_spec_hash(spec, instance_name=desired.metadata.name or "")
        sandbox_ok = (
            sandbox is not None
            and _running(sandbox)
            and sandbox.labels.spec_hash == sandbox_hash
            and bool(sandbox.ip)
        )
        if not sandbox_ok:
            return _plan_new_sandbox(
                desired, observed, sandbox_hash, stops=stops, removes=removes, policy=policy
            )
        assert sandbox is not None

    starts: list[ContainerStart] = []
    waiting: list[Waiting] = []
    wake_at: float | None = None
    for container in spec.containers:
        name = container.name
        spec_hash = expected_spec_hash(desired, name, without_sandbox=solo)
        key: CrashKey = (uid, name, spec_hash)
        latest = observed.latest(name)
        if latest is None:
            starts.append(ContainerStart(name=name, restart_count=0, message="created"))
            continue
        if latest.state is RunState.CREATED:
            # Created by a pass that was interrupted before it could start it.
            if latest.id not in removes:
                removes.append(latest.id)
            starts.append(
                ContainerStart(name=name, restart_count=latest.restart_count, message="recreated")
            )
            continue
        if latest.state is RunState.RUNNING:
            # Without a sandbox the container must hold the network itself, not sit in a
            # sandbox that is gone.
            moved = (
                latest.sandbox_id is not None
                if sandbox is None
                else latest.sandbox_id != sandbox.id
            )
            if latest.labels.spec_hash != spec_hash or moved:
                why = (
                    KillReason.SPEC_CHANGED
                    if latest.labels.spec_hash != spec_hash
                    else KillReason.SANDBOX_CHANGED
                )
                # A changed definition restarts whatever the restart policy says.
                stops.append(_stop(latest, why, f"{name}: {why.value}, will be restarted", grace))
                starts.append(
                    ContainerStart(
                        name=name,
                        restart_count=latest.restart_count + 1,
                        message=f"{why.value}",
                    )
                )
                continue
            verdict = context.verdicts.get(latest.id)
            if verdict is not None:
                # Killed only; the next pass sees it exited and applies the restart
                # policy and the back-off like for any other failure.
                stops.append(_stop(latest, verdict.reason, verdict.message, grace))
            continue
        if latest.state is not RunState.EXITED or not should_restart(policy, latest):
            continue
        entry = context.backoff(key)
        failed_at = latest.finished_at or latest.created_at
        if entry is not None and latest.run_seconds >= context.policy.reset_after_seconds:
            entry = None  # it ran long enough: this failure starts a new series
        if in_backoff(entry, failed_at=failed_at, now=context.now):
            assert entry is not None
            at = retry_at(entry, failed_at=failed_at)
            wake_at = at if wake_at is None or (at is not None and at < wake_at) else wake_at
            waiting.append(
                Waiting(
                    name=name,
                    reason=CRASH_LOOP_BACK_OFF,
                    message=(
                        f"back-off {entry.delay:g}s restarting failed container={name} "
                        f"instance={desired.metadata.namespace}/{desired.metadata.name}"
                    ),
                )
            )
            continue
        bumped = next_entry(entry, context.policy, failed_at=failed_at, ran_for=latest.run_seconds)
        starts.append(
            ContainerStart(
                name=name,
                restart_count=latest.restart_count + 1,
                message=f"restarting after exit code {latest.exit_code}",
                backoff=(key, bumped),
            )
        )
    return InstanceActions(
        stop=tuple(stops),
        remove=tuple(dict.fromkeys(removes)),
        start=tuple(starts),
        waiting=tuple(waiting),
        wake_at=wake_at,
        without_sandbox=solo,
    )


def _plan_new_sandbox(
    desired: Instance,
    observed: ObservedInstance,
    sandbox_hash: str,
    *,
    stops: list[ContainerStop],
    removes: list[ContainerID],
    policy: str,
) -> InstanceActions:
    """No usable sandbox: replace it, and restart what the restart policy allows in it."""
    grace = _grace_of(desired)
    sandbox = observed.latest_sandbox
    stopping = {s.id for s in stops}
    for record in observed.containers:
        if _running(record) and record.id not in stopping:
            stops.append(_stop(record, KillReason.SANDBOX_CHANGED, "sandbox is replaced", grace))
    if sandbox is not None:
        if _running(sandbox):
            stops.append(_stop(sandbox, KillReason.SANDBOX_CHANGED, "sandbox is replaced", 0))
        removes.append(sandbox.id)
    if policy == "Never" and observed.containers:
        # The kubelet's rule: a run-once instance whose containers already ran gets no
        # second sandbox; its containers end as they are, and the phase says how.
        return InstanceActions(stop=tuple(stops), remove=tuple(dict.fromkeys(removes)))
    starts = []
    for container in desired.spec.containers:
        latest = observed.latest(container.name)
        if latest is None:
            starts.append(ContainerStart(name=container.name, restart_count=0, message="created"))
            continue
        if latest.state is RunState.EXITED and not should_restart(policy, latest):
            continue
        if latest.state is RunState.CREATED and latest.id not in removes:
            removes.append(latest.id)
        bump = 0 if latest.state is RunState.CREATED else 1
        starts.append(
            ContainerStart(
                name=container.name,
                restart_count=latest.restart_count + bump,
                message="sandbox replaced",
            )
        )
    create = SandboxCreate(
        restart_count=sandbox.restart_count + 1 if sandbox is not None else 0,
        spec_hash=sandbox_hash,
        message="sandbox replaced" if sandbox is not None else "sandbox created",
    )
    return InstanceActions(
        stop=tuple(stops),
        remove=tuple(dict.fromkeys(removes)),
        create_sandbox=create,
        start=tuple(starts),
    )
