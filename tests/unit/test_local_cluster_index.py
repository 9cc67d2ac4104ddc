"""A local cluster is named by the commands that act on it; its index (bridge, namespaces,
ports) is the one it was started with, read back from its state, unless one is given."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from kopflet.cli import _add_cluster_args, _cluster_config
from kopflet.local.config import ClusterConfig, saved_index

pytestmark = pytest.mark.unit


def _config(tmp_path: Path, *argv: str) -> ClusterConfig:
    parser = argparse.ArgumentParser()
    _add_cluster_args(parser)
    args = parser.parse_args(
        [*argv, "--state-root", str(tmp_path / "state"), "--run-root", str(tmp_path / "run")]
    )
    config = _cluster_config(args)
    assert isinstance(config, ClusterConfig)
    return config


def test_a_started_cluster_is_found_by_name_with_its_own_index(tmp_path: Path) -> None:
    ClusterConfig(name="dev", index=4, nodes=2, state_root=tmp_path / "state").save()

    config = _config(tmp_path, "--name", "dev")

    assert (config.index, config.bridge) == (4, "kopflet4")
    assert saved_index(tmp_path / "state", "dev") == 4


def test_an_index_given_wins_and_an_unknown_cluster_takes_the_default(tmp_path: Path) -> None:
    ClusterConfig(name="dev", index=4, state_root=tmp_path / "state").save()

    assert _config(tmp_path, "--name", "dev", "--index", "1").index == 1
    assert _config(tmp_path, "--name", "other").index == 0


def test_unreadable_saved_state_is_no_index(tmp_path: Path) -> None:
    broken = ClusterConfig(name="dev", state_root=tmp_path)
    broken.state_dir.mkdir(parents=True)
    broken.saved_file.write_text("{not json")
    assert saved_index(tmp_path, "dev") is None
    broken.saved_file.write_text('{"index": "4"}')
    assert saved_index(tmp_path, "dev") is None
