"""Bringing a cluster up: a component that exits before it is ready is started again, a few
times, and one that keeps exiting fails the start at once with its exit code.

The components are real ``sh`` processes (no cluster); what they did is left in files."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from kopflet.local.components import Component
from kopflet.local.supervisor import START_ATTEMPTS, StartFailed, Supervisor, read_status

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def _sh() -> str:
    sh = shutil.which("sh")
    assert sh is not None
    return sh


def flaky(directory: Path, *, failures: int) -> Component:
    """Exits with 3 on its first ``failures`` starts (as a dockerd whose containerd came up
    too slowly), then serves (the ready file) until stopped."""
    directory.mkdir()
    script = (
        f"echo start >> {directory}/starts; "
        f'if [ "$(wc -l < {directory}/starts)" -le {failures} ]; then exit 3; fi; '
        f"touch {directory}/ready; exec sleep 60"
    )
    return Component(
        name="dockerd",
        node=directory.name,
        argv=(_sh(), "-c", script),
        log_file=directory / "log",
        ready=(directory / "ready").exists,
        ready_timeout=30,
        stop_timeout=2,
    )


def starts(directory: Path) -> int:
    return len((directory / "starts").read_text().splitlines())


def test_a_component_exiting_before_it_is_ready_is_started_again(tmp_path: Path) -> None:
    supervisor = Supervisor(status_file=tmp_path / "status.json", cluster_name="unit")
    try:
        supervisor.start(flaky(tmp_path / "node-1", failures=START_ATTEMPTS - 1))
        assert starts(tmp_path / "node-1") == START_ATTEMPTS
        status = read_status(tmp_path / "status.json")
        assert status is not None
        (component,) = status.components
        assert component.state == "running"
        assert component.restarts == START_ATTEMPTS - 1
        assert component.last_exit_code == 3
        assert component.pid is not None and Path(f"/proc/{component.pid}").exists()
    finally:
        supervisor.stop_all()


def test_one_that_keeps_exiting_fails_the_start_at_once(tmp_path: Path) -> None:
    supervisor = Supervisor(status_file=tmp_path / "status.json", cluster_name="unit")
    began = time.monotonic()
    try:
        with pytest.raises(StartFailed, match=rf"exited with 3 .*{START_ATTEMPTS} times"):
            supervisor.start(flaky(tmp_path / "node-1", failures=START_ATTEMPTS))
    finally:
        supervisor.stop_all()
    # Well before its 30 s ready timeout.
    assert time.monotonic() - began < 15
    assert starts(tmp_path / "node-1") == START_ATTEMPTS
    assert not (tmp_path / "node-1" / "ready").exists()


def test_the_nodes_engines_started_together_wait_out_one_flaky_start(tmp_path: Path) -> None:
    supervisor = Supervisor(status_file=tmp_path / "status.json", cluster_name="unit")
    try:
        for node, failures in (("node-1", 0), ("node-2", 1), ("node-3", 0)):
            supervisor.start(flaky(tmp_path / node, failures=failures), wait_ready=False)
        supervisor.wait_all_ready(timeout=30)
        assert [starts(tmp_path / n) for n in ("node-1", "node-2", "node-3")] == [1, 2, 1]
        assert all((tmp_path / n / "ready").exists() for n in ("node-1", "node-2", "node-3"))
    finally:
        supervisor.stop_all()


def test_one_never_ready_fails_when_the_time_is_up(tmp_path: Path) -> None:
    supervisor = Supervisor(status_file=tmp_path / "status.json", cluster_name="unit")
    silent = Component(
        name="kube-apiserver",
        argv=(_sh(), "-c", "exec sleep 60"),
        log_file=tmp_path / "log",
        ready=lambda: False,
        ready_timeout=1,
        stop_timeout=2,
    )
    try:
        with pytest.raises(StartFailed, match="kube-apiserver not ready in time"):
            supervisor.start(silent)
    finally:
        supervisor.stop_all()
