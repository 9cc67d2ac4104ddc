"""An in-memory :class:`ContainerRuntime` for unit tests: scripted exits, images and failures.

It keeps the properties the engine relies on (unique names, labels as the only identity,
stop/remove of a gone container being a no-op) and records every mutating call, so a
test can assert what the engine did, not only where it ended up.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from kopflet.agent.runtime.container_runtime import (
    AddressInUse,
    ContainerConflict,
    ContainerRequest,
    EngineInfo,
    EventKind,
    ExecResult,
    ImageInfo,
    ImagePullError,
    NetworkInfo,
    RuntimeEvent,
    RuntimeOperationError,
    RuntimeUnavailable,
    SandboxRequest,
)
from kopflet.agent.runtime.labels import ContainerID, ContainerLabels, container_name_for
from kopflet.agent.runtime.records import ContainerRecord, ContainerState, RunState
from kopflet.api import UID


class FakeRuntime:
    def __init__(self, *, now: Callable[[], float], images: tuple[str, ...] = ()) -> None:
        self._now = now
        self.containers: dict[ContainerID, ContainerRecord] = {}
        self.names: dict[str, ContainerID] = {}
        self.requests: dict[ContainerID, ContainerRequest | SandboxRequest] = {}
        self.images: dict[str, ImageInfo] = {i: ImageInfo(id=f"sha256:{i}") for i in images}
        #: Images a pull makes present; anything else fails to pull.
        self.pullable: dict[str, ImageInfo] = {}
        self.calls: list[tuple[str, str]] = []
        #: Listings of one instance's containers: one per sync pass, and then some.
        self.instance_listings = 0
        #: Listings of every container's state (the relist).
        self.state_listings = 0
        #: ``image_info`` calls by image.
        self.image_lookups: Counter[str] = Counter()
        #: Results of exec by command, used in turn; the last one repeats.
        self.exec_results: dict[tuple[str, ...], list[ExecResult]] = {}
        self.available = True
        #: Seconds a start takes (0: at once), and the most starts seen in flight together.
        self.start_seconds = 0.0
        self.starting = 0
        self.most_starting = 0
        #: While set, every pull waits until it is released (a slow registry).
        self.pulls_held: asyncio.Event | None = None
        self.network: NetworkInfo | None = None
        self._ips: list[str] = []
        #: Containers that hold their instance's network, and the address each asked for
        #: (empty: any free one), given at start and let go at exit, as Docker does.
        self._holders: dict[ContainerID, str] = {}
        self._squatted: dict[str, int | None] = {}
        self._serial = 0
        self._subscribers: list[asyncio.Queue[RuntimeEvent | None]] = []

    # -- test controls --------------------------------------------------------------------

    def exit(self, cid: ContainerID, *, code: int, oom: bool = False) -> None:
        """The container's process ends by itself."""
        record = self.containers[cid]
        self.containers[cid] = replace(
            record,
            state=RunState.EXITED,
            exit_code=code,
            oom_killed=oom,
            finished_at=self._now(),
            ip=None,
        )
        self._emit(EventKind.OOM if oom else EventKind.DIE, cid)

    def squat(self, ip: str, *, refusals: int | None = None) -> None:
        """Something not ours takes ``ip`` on the network: a start that asks for it fails
        (``refusals`` times, then it is free: an address the engine lets go of late)."""
        self._squatted[ip] = refusals

    def running(self, name: str | None = None) -> list[ContainerRecord]:
        return [
            r
            for r in self.containers.values()
            if r.state is RunState.RUNNING and (name is None or r.name == name)
        ]

    def break_events(self) -> None:
        """Every open event stream fails, as when the engine's connection drops."""
        for queue in self._subscribers:
            queue.put_nowait(None)

    def _emit(self, kind: EventKind, cid: ContainerID) -> None:
        record = self.containers[cid]
        for queue in self._subscribers:
            queue.put_nowait(
                RuntimeEvent(
                    kind=kind, container_id=cid, instance_uid=record.instance_uid, at=self._now()
                )
            )

    def _check(self) -> None:
        if not self.available:
            raise RuntimeUnavailable("fake engine is down")

    def _new_id(self) -> ContainerID:
        self._serial += 1
        return ContainerID(f"c{self._serial:04d}")

    # -- ContainerRuntime ---------------------------------------------------------------------

    async def ping(self) -> None:
        self._check()

    async def engine_info(self) -> EngineInfo:
        self._check()
        return EngineInfo(version="fake", api_version="1.41", cpus=2, memory_bytes=4 << 30)

    async def ensure_network(self, *, name: str, subnet: str, bridge_name: str) -> NetworkInfo:
        self._check()
        network = ipaddress.ip_network(subnet)
        hosts = [str(h) for h in network.hosts()]
        self._ips = hosts[1:]
        self.network = NetworkInfo(name=name, id="net", subnet=subnet, gateway=hosts[0])
        return self.network

    async def list_containers(self, instance_uid: UID | None = None) -> list[ContainerRecord]:
        self._check()
        if instance_uid is not None:
            self.instance_listings += 1
        return [
            r
            for r in self.containers.values()
            if instance_uid is None or r.instance_uid == instance_uid
        ]

    async def container_record(self, container_id: ContainerID) -> ContainerRecord | None:
        self._check()
        return self.containers.get(container_id)

    async def list_container_states(self) -> list[ContainerState]:
        self._check()
        self.state_listings += 1
        return [
            ContainerState(
                id=r.id,
                instance_uid=r.instance_uid,
                state=r.state,
                instance_ip=r.labels.instance_ip or r.ip or "",
            )
            for r in self.containers.values()
        ]

    def _add(self, labels: ContainerLabels, image: str, **fields: object) -> ContainerID:
        name = container_name_for(labels)
        if name in self.names:
            raise ContainerConflict(f"container {name} exists already")
        cid = self._new_id()
        self.names[name] = cid
        self.containers[cid] = ContainerRecord(
            id=cid,
            labels=labels,
            state=RunState.CREATED,
            image=image,
            image_id=self.images[image].id if image in self.images else "",
            created_at=self._now(),
            **fields,  # type: ignore[arg-type]
        )
        return cid

    async def create_sandbox(self, request: SandboxRequest) -> ContainerID:
        self._check()
        self.calls.append(("create-sandbox", request.labels.instance_name))
        if request.image not in self.images:
            raise RuntimeOperationError(f"No such image: {request.image}")
        cid = self._add(request.labels, request.image)
        self.requests[cid] = request
        self._holders[cid] = request.ip or ""
        try:
            await self.start_container(cid)
        except RuntimeOperationError:
            await self.remove_container(cid)
            raise
        return cid

    async def create_container(self, request: ContainerRequest) -> ContainerID:
        self._check()
        self.calls.append(("create", request.labels.container_name))
        if request.attachment is not None:
            cid = self._add(request.labels, request.image)
            self._holders[cid] = request.attachment.ip
        else:
            if request.sandbox_id not in self.containers:
                raise RuntimeOperationError("sandbox container is gone")
            cid = self._add(request.labels, request.image, sandbox_id=request.sandbox_id)
        self.requests[cid] = request
        return cid

    async def start_container(self, container_id: ContainerID) -> None:
        self._check()
        record = self.containers.get(container_id)
        if record is None:
            raise RuntimeOperationError("no such container")
        self.calls.append(("start", record.name or "sandbox"))
        if self.start_seconds:
            self.starting += 1
            self.most_starting = max(self.most_starting, self.starting)
            try:
                await asyncio.sleep(self.start_seconds)
            finally:
                self.starting -= 1
        ip = None
        if container_id in self._holders:
            used = {r.ip for r in self.containers.values() if r.ip} | set(self._squatted)
            ip = self._holders[container_id] or next(a for a in self._ips if a not in used)
            if ip in used:
                left = self._squatted.get(ip)
                if left is not None:
                    if left <= 1:
                        del self._squatted[ip]
                    else:
                        self._squatted[ip] = left - 1
                self.containers[container_id] = replace(
                    record, state=RunState.EXITED, exit_code=128, error="Address already in use"
                )
                raise AddressInUse(f"failed to set up networking: Address already in use ({ip})")
        self.containers[container_id] = replace(
            record, state=RunState.RUNNING, started_at=self._now(), ip=ip
        )
        self._emit(EventKind.START, container_id)

    async def stop_container(self, container_id: ContainerID, *, grace_seconds: int) -> None:
        self._check()
        record = self.containers.get(container_id)
        if record is None or record.state is not RunState.RUNNING:
            return
        self.calls.append(("stop", f"{record.name or 'sandbox'}/{grace_seconds}"))
        self.exit(container_id, code=137)

    async def remove_container(self, container_id: ContainerID) -> None:
        self._check()
        if container_id in self.containers:
            self._emit(EventKind.DESTROY, container_id)
        record = self.containers.pop(container_id, None)
        if record is not None:
            self.calls.append(("remove", record.name or "sandbox"))
            self._holders.pop(container_id, None)
            self.names = {n: c for n, c in self.names.items() if c != container_id}

    async def logs_tail(self, container_id: ContainerID, *, lines: int) -> str:
        self._check()
        record = self.containers.get(container_id)
        return f"last words of {record.name}\n" if record is not None else ""

    async def exec_in_container(
        self, container_id: ContainerID, command: tuple[str, ...], *, timeout_seconds: float
    ) -> ExecResult:
        self._check()
        script = self.exec_results.get(command)
        if not script:
            return ExecResult(exit_code=0)
        return script.pop(0) if len(script) > 1 else script[0]

    async def image_info(self, image: str) -> ImageInfo | None:
        self._check()
        self.image_lookups[image] += 1
        return self.images.get(image)

    async def pull_image(self, image: str) -> ImageInfo:
        self._check()
        self.calls.append(("pull", image))
        if self.pulls_held is not None:
            await self.pulls_held.wait()
        if image not in self.pullable:
            raise ImagePullError(f"registry unreachable for {image}")
        self.images[image] = self.pullable[image]
        return self.images[image]

    async def events(self) -> AsyncIterator[RuntimeEvent]:
        self._check()
        queue: asyncio.Queue[RuntimeEvent | None] = asyncio.Queue()
        self._subscribers.append(queue)
        try:
            while (event := await queue.get()) is not None:
                yield event
            raise RuntimeUnavailable("fake event stream broke")
        finally:
            self._subscribers.remove(queue)
