"""Observed state: what the engine says about our containers, grouped per instance. Pure data."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from kopflet.agent.runtime.labels import ContainerID, ContainerLabels, ContainerRole
from kopflet.api import UID


class RunState(StrEnum):
    #: Created and never started (an interrupted create; a start that failed is EXITED).
    CREATED = "created"
    RUNNING = "running"
    #: Stopped after running, or a start the engine refused.
    EXITED = "exited"
    #: Anything the engine reports that we do not model (paused, dead, removing).
    UNKNOWN = "unknown"


@dataclass(frozen=True, kw_only=True)
class ContainerState:
    """One of our containers as the engine's listing shows it, without an inspect: what the
    relist compares (the kubelet's PLEG compares container states from a listing too)."""

    id: ContainerID
    instance_uid: UID
    state: RunState
    #: The instance's address: its label, or what the engine gave a running container.
    instance_ip: str = ""


@dataclass(frozen=True, kw_only=True)
class ContainerRecord:
    """One of our containers as the engine last reported it. Times are epoch seconds."""

    id: ContainerID
    labels: ContainerLabels
    state: RunState
    image: str
    image_id: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    oom_killed: bool = False
    #: The engine's explanation when a start failed (bad command, missing mount...).
    error: str = ""
    #: A container holding the instance's network, while it runs: the instance IP.
    ip: str | None = None
    #: App containers in a sandbox: the sandbox whose network namespace they joined.
    #: ``None`` for the one container of an instance without a sandbox.
    sandbox_id: ContainerID | None = None

    @property
    def instance_uid(self) -> UID:
        return self.labels.instance_uid

    @property
    def name(self) -> str:
        return self.labels.container_name

    @property
    def restart_count(self) -> int:
        return self.labels.restart_count

    @property
    def is_sandbox(self) -> bool:
        return self.labels.role is ContainerRole.SANDBOX

    @property
    def holds_network(self) -> bool:
        """A sandbox, or the container of an instance without one: it has the address."""
        return self.is_sandbox or self.sandbox_id is None

    @property
    def run_seconds(self) -> float:
        """How long an exited container ran; 0 if it never did."""
        if self.started_at is None or self.finished_at is None:
            return 0.0
        return max(0.0, self.finished_at - self.started_at)


@dataclass(frozen=True, kw_only=True)
class ObservedInstance:
    """Every container of one instance that the engine holds (the kubelet's PodStatus).

    Both tuples are sorted newest first: by attempt, then by creation time.
    """

    uid: UID
    sandboxes: tuple[ContainerRecord, ...] = ()
    containers: tuple[ContainerRecord, ...] = ()

    @property
    def all(self) -> tuple[ContainerRecord, ...]:
        return self.sandboxes + self.containers

    @property
    def latest_sandbox(self) -> ContainerRecord | None:
        return self.sandboxes[0] if self.sandboxes else None

    @property
    def instance_ip(self) -> str | None:
        """The address of the running container that holds the instance's network."""
        holders = (*self.sandboxes[:1], *(c for c in self.containers if c.holds_network))
        return next(
            (r.ip for r in holders if r.state is RunState.RUNNING and r.ip),
            None,
        )

    @property
    def assigned_ip(self) -> str:
        """The address the instance holds or will hold again: the newest label naming one,
        else what the engine gave a running holder (containers of older agents)."""
        labelled = max(
            (r for r in self.all if r.labels.instance_ip),
            key=lambda r: r.created_at,
            default=None,
        )
        return labelled.labels.instance_ip if labelled else self.instance_ip or ""

    def history(self, name: str) -> tuple[ContainerRecord, ...]:
        """The containers run for spec container ``name``, newest first."""
        return tuple(c for c in self.containers if c.name == name)

    def latest(self, name: str) -> ContainerRecord | None:
        return next((c for c in self.containers if c.name == name), None)

    def last_exited(self, name: str) -> ContainerRecord | None:
        return next(
            (c for c in self.containers if c.name == name and c.state is RunState.EXITED), None
        )


def _newest_first(records: Iterable[ContainerRecord]) -> tuple[ContainerRecord, ...]:
    return tuple(sorted(records, key=lambda r: (r.restart_count, r.created_at), reverse=True))


def group_by_instance(records: Iterable[ContainerRecord]) -> dict[UID, ObservedInstance]:
    by_uid: dict[UID, list[ContainerRecord]] = {}
    for record in records:
        by_uid.setdefault(record.instance_uid, []).append(record)
    return {uid: observed_instance(uid, found) for uid, found in by_uid.items()}


def observed_instance(uid: UID, records: Iterable[ContainerRecord]) -> ObservedInstance:
    mine = [r for r in records if r.instance_uid == uid]
    return ObservedInstance(
        uid=uid,
        sandboxes=_newest_first(r for r in mine if r.is_sandbox),
        containers=_newest_first(r for r in mine if not r.is_sandbox),
    )
