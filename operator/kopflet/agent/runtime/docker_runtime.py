"""The :class:`ContainerRuntime` on a real Docker engine (docker SDK, API version negotiated).

The SDK blocks, so every call runs on a private thread pool: a ``stop`` that waits out a
30 s grace period must not starve the relist or the probes of threads, and the event
stream holds one thread for as long as it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

import docker
import docker.errors
import docker.types
import docker.utils
import requests.exceptions
from docker.transport import UnixHTTPAdapter

from kopflet.agent.runtime import metrics
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
    NotOurs,
    PortBinding,
    RuntimeEvent,
    RuntimeOperationError,
    RuntimeUnavailable,
    SandboxRequest,
)
from kopflet.agent.runtime.docker_records import (
    event_from,
    listed_ip,
    record_from_inspect,
    run_state_of,
)
from kopflet.agent.runtime.labels import (
    INSTANCE_UID_LABEL,
    NODE_LABEL,
    ROLE_LABEL,
    ContainerID,
    ContainerLabels,
    container_name_for,
)
from kopflet.agent.runtime.records import ContainerRecord, ContainerState
from kopflet.api import UID

T = TypeVar("T")

_MASQUERADE_OPTION: Final = "com.docker.network.bridge.enable_ip_masquerade"
_BRIDGE_NAME_OPTION: Final = "com.docker.network.bridge.name"
#: libnetwork's IPAM refusing a fixed address another endpoint holds.
_ADDRESS_IN_USE: Final = "Address already in use"


class _OnePoolUnixAdapter(UnixHTTPAdapter):  # type: ignore[misc]
    """The SDK's Unix-socket adapter keys its connection pools by the whole URL, path
    included, and keeps 25: nearly every call about a container it has not seen lately
    opens a connection of its own and closes another pool's. One socket needs one pool."""

    def get_connection(self, url: str, proxies: Any = None) -> Any:
        return super().get_connection("http+docker://localhost", proxies)


def pump_events(
    stream: Iterable[Mapping[str, Any]],
    loop: asyncio.AbstractEventLoop,
    queue: asyncio.Queue[RuntimeEvent | BaseException | None],
) -> None:
    """Carry the engine's blocking event stream into ``queue`` on ``loop``, from a thread of
    its own: each of our events, then ``None`` at its end or the exception that broke it.

    The stream ends when the reader closes it, and the reader's loop may be closed (the agent
    shutting down) before this thread gets to say so: nobody is left to tell, so that is no
    error of this thread's."""

    def post(item: RuntimeEvent | BaseException | None) -> bool:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed
            return False
        return True

    try:
        for message in stream:
            event = event_from(message)
            if event is not None and not post(event):
                return
    except Exception as exc:  # the stream broke: tell the reader, don't hide it
        post(exc)
    else:
        post(None)


class DockerRuntime:
    """One node's Docker engine. ``node`` scopes every listing: two agents sharing an
    engine (a developer machine) never see, let alone remove, each other's containers."""

    def __init__(
        self,
        *,
        base_url: str,
        node: str,
        timeout_seconds: float = 60.0,
        max_concurrency: int = 32,
    ) -> None:
        self._node = node
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="docker")
        self._api = docker.APIClient(
            base_url=base_url,
            version="auto",
            timeout=timeout_seconds,
            max_pool_size=max_concurrency,
        )
        unix = self._api.adapters.get("http+docker://")
        if isinstance(unix, UnixHTTPAdapter):
            self._api.mount(
                "http+docker://",
                _OnePoolUnixAdapter(
                    f"http+unix://{unix.socket_path}",
                    timeout=timeout_seconds,
                    max_pool_size=max_concurrency,
                ),
            )
            unix.close()
        # The node's own engine: no proxy from the environment applies to it, and no .netrc.
        # Left on, requests looks both up again on every call (~0.2 ms of CPU each).
        self._api.trust_env = False
        # Labels never change after create, so once seen ours a container id stays ours.
        self._ours: set[str] = set()
        self._lock = threading.Lock()

    def close(self) -> None:
        self._api.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        metrics.ENGINE_REQUESTS.labels(getattr(fn, "__name__", "other")).inc()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise RuntimeUnavailable(f"docker engine unreachable: {exc}") from exc
        except docker.errors.DockerException as exc:
            if isinstance(exc, docker.errors.APIError):
                raise
            raise RuntimeUnavailable(f"docker engine unusable: {exc}") from exc

    async def ping(self) -> None:
        await self._call(self._api.ping)

    async def engine_info(self) -> EngineInfo:
        info = await self._call(self._api.info)
        version = await self._call(self._api.version)
        return EngineInfo(
            version=str(info.get("ServerVersion", "")),
            api_version=str(version.get("ApiVersion", "")),
            cpus=int(info.get("NCPU", 0)),
            memory_bytes=int(info.get("MemTotal", 0)),
            kernel_version=str(info.get("KernelVersion", "")),
            operating_system=str(info.get("OperatingSystem", "")),
        )

    async def ensure_network(self, *, name: str, subnet: str, bridge_name: str) -> NetworkInfo:
        network = ipaddress.ip_network(subnet)
        gateway = str(next(network.hosts()))
        found = [n for n in await self._call(self._api.networks, names=[name]) if n["Name"] == name]
        if not found:
            ipam = docker.types.IPAMConfig(
                pool_configs=[docker.types.IPAMPool(subnet=str(network), gateway=gateway)]
            )
            try:
                await self._call(
                    self._api.create_network,
                    name,
                    driver="bridge",
                    ipam=ipam,
                    options={_MASQUERADE_OPTION: "false", _BRIDGE_NAME_OPTION: bridge_name},
                    labels={NODE_LABEL: self._node},
                )
            except docker.errors.APIError as exc:
                # Two agents racing on a fresh engine: the loser finds the winner's network.
                if exc.status_code != 409:
                    raise RuntimeOperationError(f"cannot create network {name}: {exc}") from exc
        data = await self._call(self._api.inspect_network, name)
        pools = (data.get("IPAM") or {}).get("Config") or []
        subnets = {p.get("Subnet") for p in pools}
        if str(network) not in subnets:
            raise RuntimeOperationError(
                f"network {name} has subnet(s) {sorted(map(str, subnets))}, want {network}"
            )
        pool = next(p for p in pools if p.get("Subnet") == str(network))
        return NetworkInfo(
            name=name, id=data["Id"], subnet=str(network), gateway=pool.get("Gateway") or gateway
        )

    async def list_containers(self, instance_uid: UID | None = None) -> list[ContainerRecord]:
        records = []
        for summary, _labels in await self._listing(instance_uid):
            record = await self.container_record(ContainerID(summary["Id"]))
            if record is not None:  # None: removed between the listing and the inspect
                records.append(record)
        return records

    async def container_record(self, container_id: ContainerID) -> ContainerRecord | None:
        try:
            data = await self._call(self._api.inspect_container, container_id)
        except docker.errors.NotFound:
            return None
        labels = ContainerLabels.parse((data.get("Config") or {}).get("Labels"))
        if labels is None or labels.node != self._node:
            raise NotOurs(f"container {container_id[:12]} is not kopflet's on node {self._node}")
        return record_from_inspect(data, labels)

    async def list_container_states(self) -> list[ContainerState]:
        return [
            ContainerState(
                id=ContainerID(summary["Id"]),
                instance_uid=labels.instance_uid,
                state=run_state_of(str(summary.get("State", ""))),
                instance_ip=labels.instance_ip or listed_ip(summary),
            )
            for summary, labels in await self._listing(None)
        ]

    async def _listing(
        self, instance_uid: UID | None
    ) -> list[tuple[dict[str, Any], ContainerLabels]]:
        """One listing of our containers on this node (of one instance), with their labels."""
        wanted = [f"{NODE_LABEL}={self._node}", ROLE_LABEL]
        if instance_uid is not None:
            wanted.append(f"{INSTANCE_UID_LABEL}={instance_uid}")
        summaries = await self._call(self._api.containers, all=True, filters={"label": wanted})
        listed = []
        for summary in summaries:
            labels = ContainerLabels.parse(summary.get("Labels"))
            if labels is None or labels.node != self._node:
                continue
            with self._lock:
                self._ours.add(summary["Id"])
            listed.append((summary, labels))
        return listed

    async def _require_ours(self, container_id: ContainerID) -> bool:
        """True if the container exists and is ours; False if it is gone."""
        if container_id in self._ours:
            return True
        try:
            data = await self._call(self._api.inspect_container, container_id)
        except docker.errors.NotFound:
            return False
        labels = ContainerLabels.parse((data.get("Config") or {}).get("Labels"))
        if labels is None or labels.node != self._node:
            raise NotOurs(f"container {container_id[:12]} is not kopflet's on node {self._node}")
        with self._lock:
            self._ours.add(container_id)
        return True

    async def create_sandbox(self, request: SandboxRequest) -> ContainerID:
        holder, host = self._network_holder(
            network=request.network,
            ip=request.ip,
            hostname=request.hostname,
            port_bindings=request.port_bindings,
        )
        container_id = await self._create(
            request.labels,
            image=request.image,
            command=list(request.command),
            host_config=self._api.create_host_config(**host),
            # The sandbox only sleeps: there is nothing to shut down gracefully.
            stop_signal="SIGKILL",
            **holder,
        )
        try:
            await self.start_container(container_id)
        except Exception:
            with contextlib.suppress(Exception):
                await self.remove_container(container_id)
            raise
        return container_id

    async def create_container(self, request: ContainerRequest) -> ContainerID:
        api = self._api
        mounts = [
            docker.types.Mount(m.target, m.source, type="bind", read_only=m.read_only)
            for m in request.mounts
        ]
        attachment = request.attachment
        if attachment is None:
            holder: dict[str, Any] = {}
            network: dict[str, Any] = {"network_mode": f"container:{request.sandbox_id}"}
        else:
            # Without a sandbox the container holds the instance's network, its address,
            # hostname and host ports itself: what the sandbox would have carried.
            holder, network = self._network_holder(
                network=attachment.network,
                ip=attachment.ip,
                hostname=attachment.hostname,
                port_bindings=attachment.port_bindings,
            )
        host_config = api.create_host_config(
            **network,
            nano_cpus=request.nano_cpus,
            mem_limit=request.memory_bytes,
            # No swap: a memory limit must end in an OOM kill, not in swapping.
            memswap_limit=request.memory_bytes,
            privileged=request.privileged,
            cap_add=list(request.cap_add) or None,
            cap_drop=list(request.cap_drop) or None,
            read_only=request.read_only_rootfs,
            security_opt=["no-new-privileges"] if request.no_new_privileges else None,
            mounts=mounts or None,
        )
        return await self._create(
            request.labels,
            image=request.image,
            entrypoint=list(request.entrypoint) if request.entrypoint is not None else None,
            command=list(request.args) if request.args is not None else None,
            environment=[f"{k}={v}" for k, v in request.env],
            working_dir=request.working_dir,
            user=request.user,
            host_config=host_config,
            **holder,
        )

    def _network_holder(
        self,
        *,
        network: str,
        ip: str | None,
        hostname: str,
        port_bindings: tuple[PortBinding, ...],
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The create arguments, and the host-config ones, of a container that holds an
        instance's network (a sandbox, or the one container of an instance without one)."""
        api = self._api
        endpoint = api.create_endpoint_config(ipv4_address=ip)
        create = {
            "hostname": hostname,
            "ports": [(b.container_port, b.protocol) for b in port_bindings] or None,
            "networking_config": api.create_networking_config({network: endpoint}),
        }
        host = {
            "network_mode": network,
            "port_bindings": {
                f"{b.container_port}/{b.protocol}": (b.host_ip, b.host_port) for b in port_bindings
            }
            or None,
        }
        return create, host

    async def _create(self, labels: ContainerLabels, **kwargs: Any) -> ContainerID:
        name = container_name_for(labels)
        try:
            created = await self._call(
                self._api.create_container,
                name=name,
                labels=labels.render(),
                use_config_proxy=False,
                **kwargs,
            )
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise ContainerConflict(f"container {name} exists already") from exc
            raise RuntimeOperationError(exc.explanation or str(exc)) from exc
        container_id = ContainerID(created["Id"])
        with self._lock:
            self._ours.add(container_id)
        return container_id

    async def start_container(self, container_id: ContainerID) -> None:
        if not await self._require_ours(container_id):
            raise RuntimeOperationError(f"container {container_id[:12]} is gone")
        try:
            await self._call(self._api.start, container_id)
        except docker.errors.APIError as exc:
            message = str(exc.explanation or exc)
            if _ADDRESS_IN_USE in message:
                raise AddressInUse(message) from exc
            raise RuntimeOperationError(message) from exc

    async def stop_container(self, container_id: ContainerID, *, grace_seconds: int) -> None:
        if not await self._require_ours(container_id):
            return
        try:
            await self._call(self._api.stop, container_id, timeout=max(0, grace_seconds))
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            raise RuntimeOperationError(exc.explanation or str(exc)) from exc

    async def remove_container(self, container_id: ContainerID) -> None:
        if not await self._require_ours(container_id):
            return
        try:
            await self._call(self._api.remove_container, container_id, v=True, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            # "removal already in progress" is success arriving late.
            if exc.status_code != 409:
                raise RuntimeOperationError(exc.explanation or str(exc)) from exc
        with self._lock:
            self._ours.discard(container_id)

    async def logs_tail(self, container_id: ContainerID, *, lines: int) -> str:
        if not await self._require_ours(container_id):
            return ""
        try:
            raw = await self._call(
                self._api.logs, container_id, stdout=True, stderr=True, tail=lines
            )
        except docker.errors.APIError:
            return ""
        return bytes(raw).decode("utf-8", errors="replace")

    async def exec_in_container(
        self, container_id: ContainerID, command: tuple[str, ...], *, timeout_seconds: float
    ) -> ExecResult:
        if not await self._require_ours(container_id):
            raise RuntimeOperationError(f"container {container_id[:12]} is gone")

        def run() -> ExecResult:
            try:
                exec_id = self._api.exec_create(container_id, list(command))["Id"]
                output = self._api.exec_start(exec_id)
                code = self._api.exec_inspect(exec_id).get("ExitCode")
            except docker.errors.APIError as exc:
                return ExecResult(exit_code=126, output=exc.explanation or str(exc))
            return ExecResult(
                exit_code=int(code) if code is not None else -1,
                output=bytes(output).decode("utf-8", errors="replace"),
            )

        try:
            return await asyncio.wait_for(self._call(run), timeout=timeout_seconds)
        except TimeoutError:
            # Like the kubelet on Docker: the process may live on; the probe failed anyway.
            return ExecResult(exit_code=-1, output=f"timed out after {timeout_seconds}s")

    async def image_info(self, image: str) -> ImageInfo | None:
        try:
            data = await self._call(self._api.inspect_image, image)
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            raise RuntimeOperationError(exc.explanation or str(exc)) from exc
        return ImageInfo(
            id=str(data["Id"]),
            tags=tuple(data.get("RepoTags") or ()),
            user=str((data.get("Config") or {}).get("User") or ""),
        )

    async def pull_image(self, image: str) -> ImageInfo:
        repository, tag = docker.utils.parse_repository_tag(image)
        try:
            await self._call(self._api.pull, repository, tag=tag or "latest")
        except docker.errors.APIError as exc:
            raise ImagePullError(exc.explanation or str(exc)) from exc
        info = await self.image_info(image)
        if info is None:
            raise ImagePullError(f"image {image} absent after a successful pull")
        return info

    async def events(self) -> AsyncIterator[RuntimeEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[RuntimeEvent | BaseException | None] = asyncio.Queue()
        filters = {
            "type": "container",
            "event": [k.value for k in EventKind],
            "label": [f"{NODE_LABEL}={self._node}", ROLE_LABEL],
        }
        try:
            stream = await self._call(self._api.events, decode=True, filters=filters)
        except docker.errors.APIError as exc:
            raise RuntimeUnavailable(f"docker events: {exc}") from exc

        thread = threading.Thread(
            target=pump_events, args=(stream, loop, queue), name="docker-events", daemon=True
        )
        thread.start()
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise RuntimeUnavailable(f"docker events stream broke: {item}") from item
                yield item
        finally:
            with contextlib.suppress(Exception):
                stream.close()
