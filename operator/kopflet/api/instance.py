"""Instance: one unit a node runs (the Pod analogue) — spec, status and the object."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from kopflet.api._codec import Model, wire
from kopflet.api.constants import API_VERSION
from kopflet.api.containers import Container
from kopflet.api.meta import Condition, ObjectMeta, Timestamp
from kopflet.api.volumes import Volume

RestartPolicy = Literal["Always", "OnFailure", "Never"]
InstancePhase = Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"]

#: Core default, also the schema default.
DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS = 30


@dataclass(frozen=True, kw_only=True)
class InstanceSpec(Model):
    """The Pod spec subset kopflet runs, with the core field names."""

    containers: tuple[Container, ...]
    volumes: tuple[Volume, ...] | None = None
    restart_policy: RestartPolicy | None = None
    termination_grace_period_seconds: int | None = None
    node_selector: Mapping[str, str] | None = None
    node_name: str | None = None
    hostname: str | None = None

    def container_named(self, name: str) -> Container | None:
        return next((c for c in self.containers if c.name == name), None)

    def volume_named(self, name: str) -> Volume | None:
        return next((v for v in self.volumes or () if v.name == name), None)


@dataclass(frozen=True, kw_only=True)
class ContainerStateWaiting(Model):
    reason: str | None = None
    message: str | None = None


@dataclass(frozen=True, kw_only=True)
class ContainerStateRunning(Model):
    started_at: Timestamp | None = None


@dataclass(frozen=True, kw_only=True)
class ContainerStateTerminated(Model):
    exit_code: int
    signal: int | None = None
    reason: str | None = None
    message: str | None = None
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    container_id: str | None = field(default=None, metadata=wire("containerID"))


@dataclass(frozen=True, kw_only=True)
class ContainerState(Model):
    """At most one of the three is set."""

    waiting: ContainerStateWaiting | None = None
    running: ContainerStateRunning | None = None
    terminated: ContainerStateTerminated | None = None


@dataclass(frozen=True, kw_only=True)
class ContainerStatus(Model):
    name: str
    ready: bool
    restart_count: int
    image: str
    state: ContainerState | None = None
    last_state: ContainerState | None = None
    started: bool | None = None
    image_id: str | None = field(default=None, metadata=wire("imageID"))
    container_id: str | None = field(default=None, metadata=wire("containerID"))
    #: The effective pull policy the agent applied (the core rule resolved).
    image_pull_policy: str | None = None


@dataclass(frozen=True, kw_only=True)
class InstanceStatus(Model):
    """Written by the agent of ``spec.nodeName`` only.

    ``reason`` is the one-word summary of the STATUS column (``Running``,
    ``CrashLoopBackOff``, ``ContainerCreating``, ``Completed``, ``Error``...), what
    ``kubectl get pods`` would print; ``restart_count`` is the sum over containers
    for the RESTARTS column.
    """

    phase: InstancePhase | None = None
    reason: str | None = None
    message: str | None = None
    conditions: tuple[Condition, ...] | None = None
    container_statuses: tuple[ContainerStatus, ...] | None = None
    instance_ip: str | None = field(default=None, metadata=wire("instanceIP"))
    host_ip: str | None = field(default=None, metadata=wire("hostIP"))
    start_time: Timestamp | None = None
    restart_count: int | None = None
    observed_generation: int | None = None


@dataclass(frozen=True, kw_only=True)
class Instance(Model):
    metadata: ObjectMeta
    spec: InstanceSpec
    status: InstanceStatus | None = None
    api_version: str = API_VERSION
    kind: str = "Instance"
