"""The build engine's start: a dockerd that exits before it answers is started again.

dockerd gives up after 15 s when its containerd is slow to come up, which a busy machine can
make happen. Here a ``dockerd`` ahead of the real one on ``PATH`` exits the way it does then,
on its first start or on every start; the engine is the real one otherwise."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from kopflet.local.build_engine import BuildEngine, BuildEngineError
from support import missing_infrastructure

pytestmark = pytest.mark.timeout(300)

GIVING_UP = "failed to start containerd: timeout waiting for containerd to start"


def failing_dockerd(directory: Path, *, failures: int) -> Path:
    """A ``dockerd`` that exits 1 on its first ``failures`` starts, then runs the real one.
    Every start is a line in ``starts``."""
    real = shutil.which("dockerd")
    if real is None:
        missing_infrastructure("dockerd is not installed (apt-get install docker.io)")
    bin_dir = directory / "bin"
    bin_dir.mkdir()
    starts = directory / "starts"
    script = bin_dir / "dockerd"
    script.write_text(
        "#!/bin/sh\n"
        f"echo start >> {starts}\n"
        f'if [ "$(wc -l < {starts})" -le {failures} ]; then\n'
        f"  echo '{GIVING_UP}' >&2\n"
        "  exit 1\n"
        "fi\n"
        f'exec {real} "$@"\n'
    )
    script.chmod(0o755)
    return bin_dir


def starts(directory: Path) -> int:
    return len((directory / "starts").read_text().splitlines())


def test_an_engine_that_gave_up_on_its_first_start_is_started_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = failing_dockerd(tmp_path, failures=1)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    build = BuildEngine()
    with build.running() as running:
        client = running.client(timeout=30)
        try:
            assert client.ping()
        finally:
            client.close()
        log = build.config.log_file.read_text(errors="replace")
    assert starts(tmp_path) == 2
    assert GIVING_UP in log  # the first start's words are kept in this run's log


def test_an_engine_that_keeps_giving_up_fails_with_its_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = failing_dockerd(tmp_path, failures=100)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(BuildEngineError, match=GIVING_UP), BuildEngine().running():
        pytest.fail("the engine cannot have started")
    assert starts(tmp_path) == 3
