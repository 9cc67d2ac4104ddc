"""Telling a live process from a zombie: ``down`` waits for the supervisor to go, and when
``up`` ran in the same process the supervisor is its child, in /proc until collected."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from kopflet.local.nodes import alive, reap

pytestmark = pytest.mark.unit


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return None


def test_an_exited_child_not_yet_collected_is_not_alive_and_reap_collects_it() -> None:
    child = subprocess.Popen(["sleep", "0.05"])
    assert alive(child.pid)
    deadline = time.monotonic() + 10
    while _state(child.pid) != "Z":
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)
    assert Path(f"/proc/{child.pid}").exists()  # a zombie: still listed, no longer running
    assert not alive(child.pid)
    reap(child.pid)
    assert _state(child.pid) is None
    child.returncode = 0  # collected above; keep Popen from waiting for it again


def test_reap_leaves_other_processes_alone() -> None:
    reap(1)  # not our child: nothing to collect, no error
    assert alive(os.getpid())
    assert alive(1)
