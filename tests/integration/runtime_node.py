"""One node's Docker engine for the runtime's integration tests, and the agent's side of it.

The engine runs in its own network namespace (its iptables rules and bridges stay there);
the tests run the RuntimeEngine in a thread that joined that namespace, so httpGet and
tcpSocket probes go from "the node" to the instance IP exactly as in the agent.

``KOPFLET_TEST_DOCKER_HOST`` (with ``KOPFLET_TEST_DOCKER_NETNS``, a path under
/run/netns) points the tests at an engine that already runs; otherwise a private one is
started for the test session and removed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import io
import os
import shutil
import signal
import subprocess
import tarfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import docker

from kopflet.agent.runtime.config import RuntimeConfig
from kopflet.agent.runtime.docker_runtime import DockerRuntime
from kopflet.agent.runtime.engine import RuntimeEngine
from kopflet.agent.runtime.records import ContainerRecord, RunState
from kopflet.agent.runtime.reporting import EventType, InstanceRef
from kopflet.api import UID, Instance, InstanceStatus
from support import missing_infrastructure

T = TypeVar("T")

IMAGE = "kopflet/busybox:runtime-test"
_CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class DockerNode:
    docker_host: str
    netns_path: str
    image: str = IMAGE

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.docker_host, version="auto", timeout=60)


def busybox_rootfs() -> bytes:
    """A root filesystem of the static busybox with its applets, /tmp and /etc/passwd."""
    busybox = shutil.which("busybox")
    if busybox is None:
        missing_infrastructure("busybox is not installed")
    applets = subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, mode in (("bin", 0o755), ("tmp", 0o1777), ("etc", 0o755)):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        passwd = b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        tar.addfile(info, io.BytesIO(passwd))
        for applet in applets:
            if applet != "busybox":
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
    return out.getvalue()


def load_busybox(node: DockerNode) -> None:
    client = node.client()
    try:
        repository, tag = node.image.rsplit(":", 1)
        client.api.import_image_from_data(busybox_rootfs(), repository=repository, tag=tag)
    finally:
        client.close()


def _wait_for_engine(host: str, *, seconds: float, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            client = docker.DockerClient(base_url=host, version="auto", timeout=5)
            try:
                client.ping()
                return
            finally:
                client.close()
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise AssertionError(f"dockerd at {host} did not answer within {seconds}s\n{tail}")


@contextlib.contextmanager
def docker_node() -> Iterator[DockerNode]:
    host = os.environ.get("KOPFLET_TEST_DOCKER_HOST")
    if host:
        netns = os.environ.get("KOPFLET_TEST_DOCKER_NETNS", "")
        node = DockerNode(docker_host=host, netns_path=netns)
        load_busybox(node)
        yield node
        return
    if os.geteuid() != 0:
        missing_infrastructure("the runtime tests need root (a network namespace, dockerd)")
    for tool in ("dockerd", "ip", "nsenter", "busybox"):
        if shutil.which(tool) is None:
            missing_infrastructure(f"{tool} is not installed (make deps)")
    name = f"kopflet-rt-{os.getpid()}"
    run_dir = Path("/run") / name
    data_root = Path("/var/lib") / name
    run_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ip", "netns", "add", name], check=True)
    netns = f"/run/netns/{name}"
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    host = f"unix://{run_dir}/docker.sock"
    log = run_dir / "dockerd.log"
    with log.open("wb") as sink:
        daemon = subprocess.Popen(
            [
                "nsenter",
                f"--net={netns}",
                "--",
                "dockerd",
                f"--data-root={data_root}",
                f"--exec-root={run_dir}/exec",
                f"--host={host}",
                f"--pidfile={run_dir}/docker.pid",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_engine(host, seconds=60, log=log)
        node = DockerNode(docker_host=host, netns_path=netns)
        load_busybox(node)
        yield node
    finally:
        client = docker.DockerClient(base_url=host, version="auto", timeout=30)
        with contextlib.suppress(Exception):
            for container in client.containers.list(all=True):
                container.remove(force=True)
        client.close()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(data_root, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)


def run_in_netns(netns_path: str, main: Callable[[], Awaitable[T]], *, timeout: float) -> T:
    """``asyncio.run(main())`` in a thread inside the node's network namespace.

    A network namespace is per thread: only this thread (and the threads it starts, such
    as the Docker adapter's pool) sees the node's network; the rest of pytest stays put.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            if netns_path:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(netns_path, os.O_RDONLY)
                try:
                    if libc.setns(fd, _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                finally:
                    os.close(fd)
            outcome["value"] = asyncio.run(asyncio.wait_for(main(), timeout=timeout))
        except BaseException as exc:  # handed to the test's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="node-netns")
    thread.start()
    thread.join(timeout + 30)
    if thread.is_alive():
        raise AssertionError(f"scenario still running after {timeout + 30:.0f}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


class Objects:
    """ConfigMaps and Secrets as the agent's watch cache would hand them over."""

    def __init__(self) -> None:
        self.config_maps: dict[str, dict[str, bytes]] = {}
        self.secrets: dict[str, dict[str, bytes]] = {}

    def config_map(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        return self.config_maps.get(f"{namespace}/{name}")

    def secret(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        return self.secrets.get(f"{namespace}/{name}")


@dataclass
class Reporter:
    """Records what the engine reports, with the time it arrived."""

    statuses: dict[str, list[InstanceStatus]] = field(default_factory=dict)
    events: list[tuple[float, str, str, str]] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)

    async def instance_status(self, instance: Instance, status: InstanceStatus) -> None:
        self.statuses.setdefault(instance.metadata.name or "", []).append(status)

    def overwritten(self, instance: Instance) -> bool:
        return False

    async def instance_cleaned_up(self, instance: Instance) -> None:
        self.cleaned.append(instance.metadata.name or "")

    def event(self, ref: InstanceRef, *, type: EventType, reason: str, message: str) -> None:
        self.events.append((time.time(), ref.name, reason, message))

    def last(self, name: str) -> InstanceStatus | None:
        found = self.statuses.get(name)
        return found[-1] if found else None

    def reasons(self, name: str) -> list[str]:
        return [r for _, n, r, _ in self.events if n == name]


async def until(what: Callable[[], Any], *, seconds: float, message: str) -> Any:
    """Polls ``what`` (sync or async) until it is truthy; fails after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = what()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds}s: {message} (last: {value!r})")
        await asyncio.sleep(0.1)


def instance(name: str, *, node: str, uid: str | None = None, **spec: Any) -> Instance:
    body: dict[str, Any] = {"nodeName": node, "terminationGracePeriodSeconds": 2}
    body.update(spec)
    return Instance.from_dict(
        {
            "metadata": {"name": name, "namespace": "default", "uid": uid or f"uid-{name}"},
            "spec": body,
        }
    )


class Agent:
    """The runtime half of one node's agent, as the main loop would run it."""

    def __init__(self, node: DockerNode, *, name: str, volumes_dir: Path, **config: Any) -> None:
        settings: dict[str, Any] = {
            "instance_subnet": "10.244.7.0/24",
            "sandbox_image": node.image,
            "host_ip": "192.168.77.2",
            "relist_period_seconds": 0.5,
            "resync_period_seconds": 5.0,
            "allow_host_path": True,
        }
        settings.update(config)
        self.name = name
        self.node = node
        self.runtime = DockerRuntime(base_url=node.docker_host, node=name)
        self.reporter = Reporter()
        self.objects = Objects()
        self.engine = RuntimeEngine(
            runtime=self.runtime,
            config=RuntimeConfig(node_name=name, volumes_dir=volumes_dir, **settings),
            resolver=self.objects,
            reporter=self.reporter,
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Agent:
        self._task = asyncio.create_task(self.engine.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        # The agent leaves its containers running when it stops (static stability); the
        # test does not, so that the next test starts from an empty node.
        for record in await self.runtime.list_containers():
            await self.runtime.remove_container(record.id)
        self.runtime.close()

    async def records(self, uid: str | None = None) -> list[ContainerRecord]:
        return await self.runtime.list_containers(UID(uid) if uid else None)

    async def running(self, uid: str, name: str) -> list[ContainerRecord]:
        return [
            r
            for r in await self.records(uid)
            if r.name == name and r.state is RunState.RUNNING and not r.is_sandbox
        ]

    async def exec(self, uid: str, name: str, *command: str) -> str:
        [record] = await self.running(uid, name)
        result = await self.runtime.exec_in_container(record.id, command, timeout_seconds=10)
        return result.output

    def phase(self, name: str) -> str | None:
        status = self.reporter.last(name)
        return status.phase if status else None

    def reason(self, name: str) -> str | None:
        status = self.reporter.last(name)
        return status.reason if status else None
