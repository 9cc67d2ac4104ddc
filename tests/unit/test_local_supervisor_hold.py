"""Holding a component: the supervisor stops it, keeps it stopped, and starts it on release.

The supervised component is a real ``sleep`` process: no cluster, only a child process."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kopflet.local.components import Component
from kopflet.local.supervisor import ComponentState, Supervisor, hold_name, read_status

pytestmark = pytest.mark.timeout(60)


def _state(status_file: Path, name: str) -> ComponentState:
    current = read_status(status_file)
    assert current is not None
    return next(c for c in current.components if c.name == name)


def _wait(probe: object, *, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[tuple[Supervisor, Path, Path]]:
    sleep = shutil.which("sleep")
    if sleep is None:
        pytest.skip("no sleep binary")
    status_file = tmp_path / "status.json"
    hold_dir = tmp_path / "hold"
    hold_dir.mkdir()
    supervisor = Supervisor(status_file=status_file, cluster_name="unit", hold_dir=hold_dir)
    supervisor.start(
        Component(
            name="sleeper",
            node="node-1",
            argv=(sleep, "300"),
            log_file=tmp_path / "sleeper.log",
            stop_timeout=5,
        )
    )
    stop = threading.Event()
    loop = threading.Thread(target=supervisor.supervise, kwargs={"should_stop": stop.is_set})
    loop.start()
    try:
        yield supervisor, status_file, hold_dir
    finally:
        stop.set()
        loop.join(timeout=10)
        supervisor.stop_all()


def test_held_component_is_stopped_and_not_restarted_until_released(
    supervised: tuple[Supervisor, Path, Path],
) -> None:
    _supervisor, status_file, hold_dir = supervised
    first_pid = _state(status_file, "sleeper").pid
    assert first_pid is not None

    (hold_dir / hold_name("sleeper", "node-1")).touch()
    _wait(lambda: _state(status_file, "sleeper").state == "held")
    assert not Path(f"/proc/{first_pid}").exists() or _zombie(first_pid)
    # Held for longer than the 1 s restart back-off: still not started again.
    time.sleep(1.6)
    held = _state(status_file, "sleeper")
    assert held.state == "held" and held.pid is None and held.restarts == 0

    (hold_dir / hold_name("sleeper", "node-1")).unlink()
    _wait(lambda: _state(status_file, "sleeper").state == "running")
    released = _state(status_file, "sleeper")
    assert released.pid not in (None, first_pid)
    assert released.restarts == 1


def test_hold_names_a_node_component_by_its_node() -> None:
    assert hold_name("dockerd", "node-2") == "dockerd@node-2"
    assert hold_name("kube-apiserver", None) == "kube-apiserver"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
