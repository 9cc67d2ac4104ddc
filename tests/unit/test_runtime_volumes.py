"""Volume directories: emptyDir lifetime, atomic configMap/secret files, hostPath policy."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from kopflet.agent.runtime.environment import ContainerConfigError
from kopflet.agent.runtime.volumes import InstanceVolumes, write_atomically
from kopflet.api import UID, Instance

pytestmark = pytest.mark.unit


class Objects:
    def __init__(self) -> None:
        self.config_maps: dict[str, dict[str, bytes]] = {}
        self.secrets: dict[str, dict[str, bytes]] = {}

    def config_map(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        return self.config_maps.get(f"{namespace}/{name}")

    def secret(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        return self.secrets.get(f"{namespace}/{name}")


def instance(volumes: list[dict[str, Any]]) -> Instance:
    return Instance.from_dict(
        {
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "u-1"},
            "spec": {"containers": [{"name": "main", "image": "i:1"}], "volumes": volumes},
        }
    )


def test_config_map_volume_is_updated_in_place_when_the_config_map_changes(
    tmp_path: Path,
) -> None:
    objects = Objects()
    objects.config_maps["shop/cfg"] = {"a.conf": b"one", "b.conf": b"two"}
    volumes = InstanceVolumes(tmp_path, allow_host_path=False)
    inst = instance([{"name": "cfg", "configMap": {"name": "cfg"}}])
    paths = volumes.prepare(inst, objects)
    cfg = Path(paths["cfg"])
    assert (cfg / "a.conf").read_text() == "one"
    assert oct((cfg / "a.conf").stat().st_mode & 0o777) == oct(0o644)

    objects.config_maps["shop/cfg"] = {"a.conf": b"uno"}
    assert volumes.prepare(inst, objects) == paths
    assert (cfg / "a.conf").read_text() == "uno"
    assert not (cfg / "b.conf").exists()
    # One data directory only: the previous generation is cleaned up.
    assert len([p for p in cfg.iterdir() if p.name.startswith("..") and not p.is_symlink()]) == 1


def test_unchanged_content_is_not_rewritten(tmp_path: Path) -> None:
    files = {PurePosixPath("k"): (b"v", 0o600)}
    assert write_atomically(tmp_path / "vol", files) is True
    target = os.readlink(tmp_path / "vol" / "..data")
    assert write_atomically(tmp_path / "vol", files) is False
    assert os.readlink(tmp_path / "vol" / "..data") == target


def test_secret_items_choose_keys_paths_and_modes(tmp_path: Path) -> None:
    objects = Objects()
    objects.secrets["shop/creds"] = {"user": b"bob", "password": b"pw"}
    inst = instance(
        [
            {
                "name": "creds",
                "secret": {
                    "secretName": "creds",
                    "defaultMode": 0o400,
                    "items": [{"key": "password", "path": "db/pass"}],
                },
            }
        ]
    )
    paths = InstanceVolumes(tmp_path, allow_host_path=False).prepare(inst, objects)
    creds = Path(paths["creds"])
    assert (creds / "db" / "pass").read_text() == "pw"
    assert (creds / "db" / "pass").stat().st_mode & 0o777 == 0o400
    assert not (creds / "user").exists()


def test_missing_config_map_is_a_config_error_unless_optional(tmp_path: Path) -> None:
    volumes = InstanceVolumes(tmp_path, allow_host_path=False)
    with pytest.raises(ContainerConfigError, match='configmap "nope" not found'):
        volumes.prepare(instance([{"name": "c", "configMap": {"name": "nope"}}]), Objects())
    optional = instance([{"name": "c", "configMap": {"name": "nope", "optional": True}}])
    assert Path(volumes.prepare(optional, Objects())["c"]).is_dir()


def test_empty_dir_lives_and_dies_with_the_instance(tmp_path: Path) -> None:
    volumes = InstanceVolumes(tmp_path, allow_host_path=False)
    paths = volumes.prepare(instance([{"name": "scratch", "emptyDir": {}}]), Objects())
    (Path(paths["scratch"]) / "file").write_text("kept across restarts")
    volumes.prepare(instance([{"name": "scratch", "emptyDir": {}}]), Objects())
    assert (Path(paths["scratch"]) / "file").read_text() == "kept across restarts"
    assert volumes.known_uids() == {UID("u-1")}
    volumes.remove(UID("u-1"))
    assert not Path(paths["scratch"]).exists()
    assert volumes.known_uids() == set()


def test_host_path_is_refused_unless_allowed(tmp_path: Path) -> None:
    spec = [{"name": "h", "hostPath": {"path": str(tmp_path / "h"), "type": "DirectoryOrCreate"}}]
    with pytest.raises(ContainerConfigError, match="hostPath"):
        InstanceVolumes(tmp_path / "v", allow_host_path=False).prepare(instance(spec), Objects())
    paths = InstanceVolumes(tmp_path / "v", allow_host_path=True).prepare(instance(spec), Objects())
    assert paths == {"h": str(tmp_path / "h")} and (tmp_path / "h").is_dir()


def test_item_paths_cannot_escape_the_volume(tmp_path: Path) -> None:
    objects = Objects()
    objects.config_maps["shop/cfg"] = {"k": b"v"}
    spec = [{"name": "c", "configMap": {"name": "cfg", "items": [{"key": "k", "path": "../x"}]}}]
    with pytest.raises(ContainerConfigError, match="invalid volume item path"):
        InstanceVolumes(tmp_path, allow_host_path=False).prepare(instance(spec), objects)
