"""Runs the components of a local cluster and restarts those that exit, with back-off, as the
kubelet restarts a crashing pod. Its view of the world goes to a status file that
``kopflet status`` reads; nothing else is remembered (``kopflet down`` finds everything by name).

A component can be *held*: while a file named after it exists in the hold directory
(``kopflet hold``), the supervisor stops it and does not restart it; once the file is gone
(``kopflet release``) it starts it at once. Fault tests stop a node's engine or the API server
this way for a set time, which killing alone cannot do under a supervisor that restarts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import groupby
from pathlib import Path

from loguru import logger

from kopflet.local.components import Component

#: Restart back-off of a component that exits: 1 s doubling to 30 s; a component that ran for
#: 60 s is healthy again and starts over at 1 s.
BACKOFF_BASE = 1.0
BACKOFF_MAX = 30.0
BACKOFF_RESET_AFTER = 60.0
#: Starts a component gets to become ready when the cluster comes up, before ``up`` fails.
START_ATTEMPTS = 3


@dataclass
class ComponentState:
    name: str
    node: str | None
    state: str = "waiting"  # waiting | running | backoff | held | not built | stopped
    pid: int | None = None
    restarts: int = 0
    started_at: float | None = None
    last_exit_code: int | None = None
    message: str = ""


@dataclass
class _Running:
    component: Component
    status: ComponentState
    process: subprocess.Popen[bytes] | None = None
    next_start: float = 0.0
    backoff: float = BACKOFF_BASE


@dataclass
class ClusterStatus:
    name: str
    phase: str = "Starting"  # Starting | Ready | Failed | Stopping
    message: str = ""
    supervisor_pid: int = field(default_factory=os.getpid)
    details: dict[str, str] = field(default_factory=dict)
    components: list[ComponentState] = field(default_factory=list)


class StartFailed(RuntimeError):
    pass


def hold_name(name: str, node: str | None) -> str:
    """The hold file of a component: ``kube-apiserver``, ``dockerd@node-2``."""
    return f"{name}@{node}" if node else name


class Supervisor:
    def __init__(
        self, *, status_file: Path, cluster_name: str, hold_dir: Path | None = None
    ) -> None:
        self._status_file = status_file
        self._hold_dir = hold_dir
        self._running: list[_Running] = []
        self._stopping = False
        self.status = ClusterStatus(name=cluster_name)

    # -- status file -------------------------------------------------------------------------
    def write_status(self) -> None:
        self.status.components = [r.status for r in self._running]
        self._status_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.status), indent=2))
        tmp.rename(self._status_file)

    def set_phase(self, phase: str, message: str = "") -> None:
        self.status.phase = phase
        self.status.message = message
        logger.info("cluster {}: {}", phase, message)
        self.write_status()

    # -- components --------------------------------------------------------------------------
    def add_placeholder(self, *, name: str, node: str | None, message: str) -> None:
        """A component that cannot run yet (not built): shown in the status, never started."""
        state = ComponentState(name=name, node=node, state="not built", message=message)
        self._running.append(
            _Running(component=Component(name=name, argv=(), log_file=Path()), status=state)
        )
        self.write_status()

    def start(self, component: Component, *, wait_ready: bool = True) -> None:
        running = _Running(
            component=component, status=ComponentState(name=component.name, node=component.node)
        )
        self._running.append(running)
        self._spawn(running)
        if wait_ready and component.ready is not None:
            self._wait_ready(running)
        self.write_status()

    def _spawn(self, running: _Running) -> None:
        component = running.component
        component.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(component.log_file, "ab") as log:
            log.write(
                f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting "
                f"{' '.join(component.command())}\n".encode()
            )
            log.flush()
            running.process = subprocess.Popen(
                component.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **dict(component.env)},
            )
        running.status.pid = running.process.pid
        running.status.state = "running"
        running.status.started_at = time.time()
        logger.info("started {} (pid {})", _label(component), running.process.pid)

    def _respawn(self, running: _Running) -> None:
        """Start a component again that exited (or was held): one restart more."""
        running.status.restarts += 1
        running.status.message = ""
        self._spawn(running)

    def _wait_ready(self, running: _Running) -> None:
        self._wait_until_ready([running], time.monotonic() + running.component.ready_timeout)

    def wait_all_ready(self, timeout: float) -> None:
        self._wait_until_ready(self._running, time.monotonic() + timeout)

    def _wait_until_ready(self, group: list[_Running], deadline: float) -> None:
        """Wait for every component of ``group`` to be ready, by ``deadline``.

        One that exits first is started again, up to ``START_ATTEMPTS`` starts in all: a
        dockerd gives up when its containerd is slow to come up on a busy machine, and a second
        start finds it up. One that keeps exiting fails the start with its exit code at once,
        rather than when the deadline passes."""
        waiting = [r for r in group if r.component.ready is not None]
        while waiting:
            for running in list(waiting):
                ready = running.component.ready
                assert ready is not None
                if ready():
                    waiting.remove(running)
                    continue
                process = running.process
                if process is None or process.poll() is None:
                    continue
                component = running.component
                running.status.last_exit_code = process.returncode
                if running.status.restarts + 1 >= START_ATTEMPTS:
                    running.status.state = "stopped"
                    running.status.pid = None
                    self.write_status()
                    raise StartFailed(
                        f"{_label(component)} exited with {process.returncode} before it was "
                        f"ready, {START_ATTEMPTS} times; see {component.log_file}"
                    )
                logger.warning(
                    "{} exited with {} before it was ready; starting it again",
                    _label(component),
                    process.returncode,
                )
                self._respawn(running)
                self.write_status()
            if waiting and time.monotonic() > deadline:
                names = ", ".join(_label(r.component) for r in waiting)
                logs = ", ".join(str(r.component.log_file) for r in waiting)
                raise StartFailed(f"{names} not ready in time; see {logs}")
            if waiting:
                time.sleep(0.3)

    # -- supervision ---------------------------------------------------------------------------
    def _held(self, running: _Running) -> bool:
        if self._hold_dir is None:
            return False
        return (self._hold_dir / hold_name(running.component.name, running.component.node)).exists()

    def _hold(self, running: _Running) -> None:
        process = running.process
        if process is not None and process.poll() is None:
            self._stop(running)
        running.status.state = "held"
        running.status.pid = None
        running.status.message = "held: stopped until released"
        logger.warning("{} held", _label(running.component))

    def supervise(self, *, should_stop: Callable[[], bool]) -> None:
        while not should_stop():
            changed = False
            now = time.monotonic()
            for running in self._running:
                process = running.process
                held = self._held(running)
                if held and running.status.state in {"running", "backoff"}:
                    self._hold(running)
                    changed = True
                elif running.status.state == "held":
                    if not held:
                        running.backoff = BACKOFF_BASE
                        self._respawn(running)
                        changed = True
                elif running.status.state == "running" and process is not None:
                    code = process.poll()
                    if code is None:
                        continue
                    ran_for = time.time() - (running.status.started_at or time.time())
                    if ran_for > BACKOFF_RESET_AFTER:
                        running.backoff = BACKOFF_BASE
                    running.status.last_exit_code = code
                    running.status.state = "backoff"
                    running.status.pid = None
                    running.next_start = now + running.backoff
                    running.status.message = (
                        f"exited with {code}; restarting in {running.backoff:.0f}s"
                    )
                    logger.warning("{} {}", _label(running.component), running.status.message)
                    running.backoff = min(running.backoff * 2, BACKOFF_MAX)
                    changed = True
                elif running.status.state == "backoff" and now >= running.next_start:
                    self._respawn(running)
                    changed = True
            if changed:
                self.write_status()
            time.sleep(0.5)

    def stop_all(self) -> None:
        """Stop in reverse start order: agents and controller, engines, then the control plane.

        The nodes' copies of one component (the three agents, the three engines) stop
        together: an engine with running containers can take its whole stop timeout, and
        one node after the other made ``kopflet down`` wait minutes.
        """
        for _name, copies in groupby(reversed(self._running), key=lambda r: r.component.name):
            group = list(copies)
            live = [r for r in group if r.process is not None and r.process.poll() is None]
            self._stop_together(live)
            for running in group:
                if running in live or running.status.state != "not built":
                    running.status.state = "stopped"
                if running in live:
                    running.status.pid = None
        self.write_status()

    def _stop_together(self, group: list[_Running]) -> None:
        for running in group:
            assert running.process is not None
            running.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        for running in group:
            assert running.process is not None
            left = running.component.stop_timeout - (time.monotonic() - started)
            try:
                running.process.wait(timeout=max(left, 0.0))
            except subprocess.TimeoutExpired:
                running.process.kill()
                running.process.wait(timeout=10)

    def _stop(self, running: _Running) -> None:
        self._stop_together([running])


def _label(component: Component) -> str:
    return f"{component.name}@{component.node}" if component.node else component.name


def read_status(status_file: Path) -> ClusterStatus | None:
    try:
        raw = json.loads(status_file.read_text())
    except (OSError, ValueError):
        return None
    components = [ComponentState(**c) for c in raw.pop("components", [])]
    return ClusterStatus(**raw, components=components)
