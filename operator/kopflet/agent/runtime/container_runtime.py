"""The boundary to the container engine: one Protocol, the requests it takes, the errors it raises.

Everything above this module speaks in these terms only; ``docker_runtime`` implements it
on a real Docker engine and ``fake_runtime`` in memory for unit tests. Implementations
list and touch only containers carrying our labels for their node, and refuse any other.

Errors follow the kopf split: :class:`RuntimeUnavailable` is temporary (the engine is
down or busy: retry the whole pass later), :class:`RuntimeOperationError` is about one
operation on one object and is reported on that object.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from kopflet.agent.runtime.labels import ContainerID, ContainerLabels
from kopflet.agent.runtime.records import ContainerRecord, ContainerState
from kopflet.api import UID


class RuntimeUnavailable(Exception):
    """The engine cannot be reached or timed out; nothing is known about the operation."""


class RuntimeOperationError(Exception):
    """The engine refused one operation; the message says why."""


class ImagePullError(RuntimeOperationError):
    pass


class ContainerConflict(RuntimeOperationError):
    """A container of that name exists already (a create that was retried)."""


class NotOurs(RuntimeOperationError):
    """The container does not carry our labels for this node: never touched."""


@dataclass(frozen=True, kw_only=True)
class Mount:
    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True, kw_only=True)
class PortBinding:
    container_port: int
    host_port: int
    protocol: str = "tcp"
    host_ip: str = ""


@dataclass(frozen=True, kw_only=True)
class SandboxRequest:
    """The container holding one instance's network namespace."""

    labels: ContainerLabels
    image: str
    command: tuple[str, ...]
    network: str
    hostname: str
    port_bindings: tuple[PortBinding, ...] = ()
    #: A fixed address on ``network``; ``None`` lets the engine's IPAM pick a free one.
    ip: str | None = None


class AddressInUse(RuntimeOperationError):
    """The engine refused the instance's address: something else holds it on the network."""


@dataclass(frozen=True, kw_only=True)
class NetworkAttachment:
    """The instance's network held by the container itself (an instance without a sandbox):
    what a sandbox would carry, on the container."""

    network: str
    ip: str
    hostname: str
    port_bindings: tuple[PortBinding, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ContainerRequest:
    """One spec container, already translated to engine terms (see ``container_config``).

    It joins the sandbox ``sandbox_id`` or, without a sandbox, holds the instance's network
    as ``attachment`` says: exactly one of the two is set.
    """

    labels: ContainerLabels
    sandbox_id: ContainerID | None = None
    attachment: NetworkAttachment | None = None
    image: str
    #: The spec's ``command``: replaces the image entrypoint (and then drops its CMD).
    entrypoint: tuple[str, ...] | None = None
    #: The spec's ``args``: replaces the image CMD.
    args: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    working_dir: str | None = None
    nano_cpus: int | None = None
    memory_bytes: int | None = None
    user: str | None = None
    read_only_rootfs: bool = False
    privileged: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    no_new_privileges: bool = True
    mounts: tuple[Mount, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ImageInfo:
    id: str
    tags: tuple[str, ...] = ()
    #: The image's configured user (``runAsNonRoot`` checks it), empty for root.
    user: str = ""


@dataclass(frozen=True, kw_only=True)
class ExecResult:
    exit_code: int
    output: str = ""


@dataclass(frozen=True, kw_only=True)
class EngineInfo:
    version: str
    api_version: str
    cpus: int
    memory_bytes: int
    kernel_version: str = ""
    operating_system: str = ""


@dataclass(frozen=True, kw_only=True)
class NetworkInfo:
    name: str
    id: str
    subnet: str
    gateway: str


class EventKind(StrEnum):
    START = "start"
    DIE = "die"
    OOM = "oom"
    #: Removed, by us or by someone else (an exited container removed by hand dies no more).
    DESTROY = "destroy"


@dataclass(frozen=True, kw_only=True)
class RuntimeEvent:
    """A hint that one of our containers changed; the sync re-reads, never trusts it."""

    kind: EventKind
    container_id: ContainerID
    instance_uid: UID
    #: When the engine logged it (epoch seconds, the engine's clock: the node's), after the
    #: change was visible to its listings and inspects; ``None`` if it did not say.
    at: float | None = None


class ContainerRuntime(Protocol):
    async def ping(self) -> None:
        """Raises :class:`RuntimeUnavailable` unless the engine answers."""

    async def engine_info(self) -> EngineInfo: ...

    async def ensure_network(self, *, name: str, subnet: str, bridge_name: str) -> NetworkInfo:
        """The instance bridge network with exactly this subnet, created if absent.

        The gateway is the subnet's first address, held by the Linux bridge
        ``bridge_name`` on the node; the engine does not masquerade (the proxy half
        routes between nodes).

        A network of that name with another subnet is an error, not replaced: instances
        on it still hold addresses from the old subnet.
        """

    async def list_containers(self, instance_uid: UID | None = None) -> list[ContainerRecord]:
        """Our containers of this node in every state, optionally of one instance only,
        each inspected afresh."""

    async def container_record(self, container_id: ContainerID) -> ContainerRecord | None:
        """One of our containers, inspected; ``None`` if it is gone."""

    async def list_container_states(self) -> list[ContainerState]:
        """Our containers of this node and their run states, from one listing and no
        inspect: what the relist compares, once a second."""

    async def create_sandbox(self, request: SandboxRequest) -> ContainerID:
        """Creates and starts the sandbox; raises :class:`ContainerConflict` if it exists."""

    async def create_container(self, request: ContainerRequest) -> ContainerID: ...

    async def start_container(self, container_id: ContainerID) -> None:
        """Raises :class:`AddressInUse` when a container holding the instance's network
        asked for an address the network gave to something else."""

    async def stop_container(self, container_id: ContainerID, *, grace_seconds: int) -> None:
        """The stop signal, then SIGKILL after ``grace_seconds``; a no-op if not running."""

    async def remove_container(self, container_id: ContainerID) -> None:
        """Force-removes the container and its anonymous volumes; a no-op if gone."""

    async def logs_tail(self, container_id: ContainerID, *, lines: int) -> str: ...

    async def exec_in_container(
        self, container_id: ContainerID, command: tuple[str, ...], *, timeout_seconds: float
    ) -> ExecResult:
        """Runs ``command`` inside the container; a timeout is an exit code of -1."""

    async def image_info(self, image: str) -> ImageInfo | None:
        """The local image of that reference, ``None`` if the engine does not hold it."""

    async def pull_image(self, image: str) -> ImageInfo:
        """Raises :class:`ImagePullError` when the registry fails or cannot be reached."""

    def events(self) -> AsyncIterator[RuntimeEvent]:
        """start / die / oom of our containers, until the engine goes away or the
        iterator is closed."""
        ...
