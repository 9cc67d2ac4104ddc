"""What the controller reads off an Instance: ownership, binding, readiness, resource requests.

Pure functions over the typed models; the agent writes the status they read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NewType

from kopflet.api import (
    Instance,
    NodeAgent,
    cpu_millis,
    find_condition,
    memory_bytes,
    parse_timestamp,
)
from kopflet.api.constants import CONDITION_READY, WORKLOAD_KIND

NodeName = NewType("NodeName", str)

#: Finalizers the agents put on Instances start with this; the node lifecycle controller
#: removes them itself only for Instances evicted from a node that is not coming back soon.
AGENT_FINALIZER_PREFIX = "kopflet.dev/"

_FINISHED_PHASES = frozenset({"Succeeded", "Failed"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, order=True)
class ObjectKey:
    """``namespace/name`` of a namespaced object (namespace ``""`` for cluster-scoped ones)."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class Requests:
    """What an Instance asks a node for: CPU in millicores, memory in bytes, one instance slot."""

    cpu_millis: int = 0
    memory_bytes: int = 0
    instances: int = 1

    def __add__(self, other: Requests) -> Requests:
        return Requests(
            cpu_millis=self.cpu_millis + other.cpu_millis,
            memory_bytes=self.memory_bytes + other.memory_bytes,
            instances=self.instances + other.instances,
        )

    def __sub__(self, other: Requests) -> Requests:
        return Requests(
            cpu_millis=self.cpu_millis - other.cpu_millis,
            memory_bytes=self.memory_bytes - other.memory_bytes,
            instances=self.instances - other.instances,
        )


NO_REQUESTS = Requests(cpu_millis=0, memory_bytes=0, instances=0)


def key_of(instance: Instance) -> ObjectKey:
    return ObjectKey(instance.metadata.namespace or "", instance.metadata.name or "")


def controller_uid(instance: Instance) -> str | None:
    """UID of the Workload that controls the Instance, if one does."""
    for ref in instance.metadata.owner_references or ():
        if ref.controller and ref.kind == WORKLOAD_KIND:
            return str(ref.uid)
    return None


def is_terminating(instance: Instance) -> bool:
    return instance.metadata.deletion_timestamp is not None


def is_finished(instance: Instance) -> bool:
    """Succeeded or Failed: its containers are gone for good and hold no node resources."""
    return bool(instance.status and instance.status.phase in _FINISHED_PHASES)


def is_bound(instance: Instance) -> bool:
    return bool(instance.spec.node_name)


def ready_since(instance: Instance) -> datetime | None:
    """When the Instance became Ready, or ``None`` if it is not Ready (or being deleted)."""
    if is_terminating(instance) or instance.status is None:
        return None
    ready = find_condition(instance.status.conditions, CONDITION_READY)
    if ready is None or ready.status != "True":
        return None
    if ready.last_transition_time is None:
        return _EPOCH  # Ready without a time: treat it as long ready
    return parse_timestamp(ready.last_transition_time)


def is_ready(instance: Instance) -> bool:
    return ready_since(instance) is not None


def is_available(instance: Instance, *, min_ready_seconds: int, now: datetime) -> bool:
    """Ready for at least ``min_ready_seconds`` (the core's availability rule)."""
    since = ready_since(instance)
    if since is None:
        return False
    return min_ready_seconds <= 0 or (now - since).total_seconds() >= min_ready_seconds


def requests_of(instance: Instance) -> Requests:
    """The sum of the containers' effective requests (a limit stands in for a missing request)."""
    cpu = memory = 0
    for container in instance.spec.containers:
        wanted = container.resources.effective_requests() if container.resources else {}
        if "cpu" in wanted:
            cpu += cpu_millis(wanted["cpu"])
        if "memory" in wanted:
            memory += memory_bytes(wanted["memory"])
    return Requests(cpu_millis=cpu, memory_bytes=memory, instances=1)


def node_is_ready(node: NodeAgent) -> bool:
    conditions = node.status.conditions if node.status else None
    ready = find_condition(conditions, CONDITION_READY)
    return ready is not None and ready.status == "True"


def creation_order_key(instance: Instance) -> tuple[str, str]:
    """Sorts oldest first; RFC 3339 timestamps in UTC compare as strings."""
    return (instance.metadata.creation_timestamp or "", instance.metadata.name or "")
