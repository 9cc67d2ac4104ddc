"""A Docker engine of our own for building and trying out the kopflet image on a machine whose
host runs no engine (the local cluster's hosts, CI).

It runs in a network namespace of its own, linked to the host by one veth pair: dockerd rewrites
the iptables of the namespace it runs in (FORWARD policy, NAT chains), so it must never run in
the host's. The namespace reaches the host — and through it the local cluster's API server — but
nothing beyond; ``apt-get`` in build steps reaches the Debian mirror through
:mod:`kopflet.local.mirror_proxy` on the host end of the link. The engine has no default bridge:
build steps and trial containers use the namespace's network (``--network host``).

Images stay in the engine's data root between runs, so the Debian base and unchanged build
layers are built once. One engine per host: a lock serialises concurrent users.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
from loguru import logger

from kopflet.local.nodes import alive, engine_answers, unmount_below
from kopflet.local.supervisor import START_ATTEMPTS

_READY_TIMEOUT = 90.0
_STOP_TIMEOUT = 30.0
_LOCK_TIMEOUT = 900.0


class BuildEngineError(RuntimeError):
    pass


@dataclass(frozen=True)
class BuildEngineConfig:
    netns: str = "kopflet-imgbuild"
    #: host end of the veth pair (15 characters at most)
    veth_host: str = "kfimgbuild0"
    host_address: str = "172.29.253.1"
    engine_address: str = "172.29.253.2"
    prefix_length: int = 30
    state_dir: Path = Path("/var/lib/kopflet-image-build")
    run_dir: Path = Path("/run/kopflet-image-build")
    proxy_port: int = 3142

    @property
    def netns_path(self) -> Path:
        return Path("/run/netns") / self.netns

    @property
    def data_root(self) -> Path:
        return self.state_dir / "docker"

    @property
    def exec_root(self) -> Path:
        return self.run_dir / "exec"

    @property
    def socket_dir(self) -> Path:
        """Holds only the engine's socket, so that it can be mounted into a container alone."""
        return self.run_dir / "sock"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket_dir / 'docker.sock'}"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "docker.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "dockerd.log"

    @property
    def lock_file(self) -> Path:
        return self.run_dir.with_name(self.run_dir.name + ".lock")


def _run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise BuildEngineError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc


def _in_netns(config: BuildEngineConfig, *argv: str) -> list[str]:
    return ["nsenter", f"--net={config.netns_path}", "--", *argv]


def ensure_network(config: BuildEngineConfig) -> None:
    if not config.netns_path.exists():
        _run(["ip", "netns", "add", config.netns])
    if not Path("/sys/class/net", config.veth_host).exists():
        _run(
            [
                "ip",
                "link",
                "add",
                config.veth_host,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                config.netns,
            ]
        )
    host_cidr = f"{config.host_address}/{config.prefix_length}"
    if f" {host_cidr} " not in _run(["ip", "-o", "addr", "show", "dev", config.veth_host]).stdout:
        _run(["ip", "addr", "add", host_cidr, "dev", config.veth_host])
    _run(["ip", "link", "set", config.veth_host, "up"])
    engine_cidr = f"{config.engine_address}/{config.prefix_length}"
    addresses = _run(_in_netns(config, "ip", "-o", "addr", "show", "dev", "eth0")).stdout
    if f" {engine_cidr} " not in addresses:
        _run(_in_netns(config, "ip", "addr", "add", engine_cidr, "dev", "eth0"))
    _run(_in_netns(config, "ip", "link", "set", "lo", "up"))
    _run(_in_netns(config, "ip", "link", "set", "eth0", "up"))
    # Everything leaves through the host, which delivers what is addressed to it (the API
    # server, the proxy) and forwards nothing.
    _run(_in_netns(config, "ip", "route", "replace", "default", "via", config.host_address))


def remove_network(config: BuildEngineConfig) -> None:
    if config.netns_path.exists():
        _kill_all(_netns_pids(config))
        _run(["ip", "netns", "del", config.netns], check=False)
    if Path("/sys/class/net", config.veth_host).exists():
        _run(["ip", "link", "del", config.veth_host], check=False)


def _netns_pids(config: BuildEngineConfig) -> list[int]:
    return [int(p) for p in _run(["ip", "netns", "pids", config.netns], check=False).stdout.split()]


def _kill_all(pids: list[int], *, timeout: float = _STOP_TIMEOUT) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.2)
        if not any(alive(p) for p in pids):
            return


@contextlib.contextmanager
def _exclusive(lock_file: Path, *, timeout: float) -> Iterator[None]:
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BuildEngineError(
                        f"the build engine stayed busy for {timeout:.0f}s ({lock_file} is locked)"
                    ) from None
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class BuildEngine:
    """Start with :meth:`running`; the engine, its namespace and the lock go away on exit (the
    data root stays)."""

    def __init__(self, config: BuildEngineConfig | None = None) -> None:
        self.config = config or BuildEngineConfig()
        self._process: subprocess.Popen[bytes] | None = None

    @contextlib.contextmanager
    def running(self, *, lock_timeout: float = _LOCK_TIMEOUT) -> Iterator[BuildEngine]:
        with _exclusive(self.config.lock_file, timeout=lock_timeout):
            # We hold the lock, so an engine still running is a leftover of a killed holder.
            self._stop_leftover()
            try:
                ensure_network(self.config)
                self._start_dockerd()
                yield self
            finally:
                self._stop()

    def client(self, *, timeout: int = 300) -> docker.DockerClient:
        return docker.DockerClient(
            base_url=self.config.docker_host, version="auto", timeout=timeout
        )

    def _start_dockerd(self) -> None:
        """Start the engine and wait until it answers. A dockerd that exits first (it gives up
        when its containerd is slow to come up on a busy machine) gets ``START_ATTEMPTS``
        starts in all, as the local cluster's components do."""
        c = self.config
        for directory in (c.state_dir, c.run_dir, c.socket_dir):
            directory.mkdir(parents=True, exist_ok=True)
        c.log_file.write_bytes(b"")  # this run's log only
        deadline = time.monotonic() + _READY_TIMEOUT
        process, starts = self._spawn_dockerd(), 1
        while not engine_answers(c.docker_host):
            exited = process.poll() is not None
            if exited and starts < START_ATTEMPTS and time.monotonic() < deadline:
                logger.warning(
                    "the build engine exited with {} before it answered; starting it again",
                    process.returncode,
                )
                process, starts = self._spawn_dockerd(), starts + 1
            elif exited or time.monotonic() >= deadline:
                tail = c.log_file.read_text(errors="replace").splitlines()[-20:]
                self._stop()
                raise BuildEngineError("the build engine did not start:\n" + "\n".join(tail))
            time.sleep(0.3)

    def _spawn_dockerd(self) -> subprocess.Popen[bytes]:
        c = self.config
        with open(c.log_file, "ab") as log:
            self._process = subprocess.Popen(
                _in_netns(
                    c,
                    "dockerd",
                    "--data-root",
                    str(c.data_root),
                    "--exec-root",
                    str(c.exec_root),
                    "--host",
                    c.docker_host,
                    "--pidfile",
                    str(c.pidfile),
                    "--bridge=none",
                    "--log-level=warn",
                ),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self._process

    def _stop(self) -> None:
        if self._process is not None:
            # SIGTERM lets dockerd stop its containers and containerd, and unmount.
            self._process.terminate()
            try:
                self._process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
            self._process = None
        self._stop_leftover()

    def _stop_leftover(self) -> None:
        c = self.config
        with contextlib.suppress(OSError, ValueError):
            pid = int(c.pidfile.read_text().strip())
            if str(c.data_root).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                _kill_all([pid])
        remove_network(c)
        unmount_below(c.exec_root, c.data_root)
