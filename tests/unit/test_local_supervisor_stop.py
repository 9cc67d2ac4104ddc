"""Stopping a cluster: the nodes' copies of a component stop together, not one after the other.

The supervised components are real ``sh`` processes that ignore SIGTERM, as an engine with
containers to stop may take its whole stop timeout: no cluster, only child processes."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from kopflet.local.components import Component
from kopflet.local.supervisor import Supervisor, read_status

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def test_the_nodes_copies_of_a_component_stop_together_and_stragglers_are_killed(
    tmp_path: Path,
) -> None:
    sh = shutil.which("sh")
    assert sh is not None
    supervisor = Supervisor(status_file=tmp_path / "status.json", cluster_name="unit")
    stubborn = (sh, "-c", "trap '' TERM; while :; do sleep 0.1; done")
    for node in ("node-1", "node-2", "node-3"):
        supervisor.start(
            Component(
                name="agent",
                node=node,
                argv=stubborn,
                log_file=tmp_path / f"{node}.log",
                stop_timeout=2,
            )
        )
    pids = [c.pid for c in supervisor.status.components]
    assert all(pids)

    started = time.monotonic()
    supervisor.stop_all()
    took = time.monotonic() - started

    # One stop timeout for the three, where one after the other took three.
    assert 1.5 < took < 5.0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    status = read_status(tmp_path / "status.json")
    assert status is not None
    assert {c.state for c in status.components} == {"stopped"}


def _zombie(pid: int | None) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
