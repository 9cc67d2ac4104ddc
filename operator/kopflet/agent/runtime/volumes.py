"""Instance volumes as directories under the agent's own root, bind-mounted into containers.

Layout: ``<root>/<instance uid>/<volume name>``. emptyDir is a plain directory that lives
and dies with the instance. configMap and secret volumes are written like the kubelet's
atomic writer: the files go into a fresh hidden directory, a ``..data`` symlink is
swapped to it with one rename, and each visible entry is a symlink through ``..data``.
A reader inside the container therefore sees either the old set of files or the new
one, never a mix, and updates reach running containers without a restart.

The root must be a path the Docker engine sees under the same name (the agent and the
engine share the node's filesystem, or the kind pod mounts it at the same path).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Final

from kopflet.agent.runtime.environment import ContainerConfigError, ReferenceResolver
from kopflet.api import UID, Instance, KeyToPath, Volume

_DATA = "..data"
_DEFAULT_MODE = 0o644


def _checked_relative(path: str) -> PurePosixPath:
    rel = PurePosixPath(path)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ContainerConfigError(f"invalid volume item path {path!r}")
    return rel


def projected_files(
    data: Mapping[str, bytes] | None,
    *,
    items: tuple[KeyToPath, ...] | None,
    default_mode: int | None,
    optional: bool,
    what: str,
) -> dict[PurePosixPath, tuple[bytes, int]]:
    """The files a configMap/secret volume holds: relative path -> (content, mode)."""
    mode = _DEFAULT_MODE if default_mode is None else default_mode
    if data is None:
        if optional:
            return {}
        raise ContainerConfigError(f"{what} not found")
    if items is None:
        return {_checked_relative(k): (v, mode) for k, v in data.items()}
    files = {}
    for item in items:
        if item.key not in data:
            if optional:
                continue
            raise ContainerConfigError(f"couldn't find key {item.key} in {what}")
        files[_checked_relative(item.path)] = (
            data[item.key],
            mode if item.mode is None else item.mode,
        )
    return files


def _current_files(volume_dir: Path) -> dict[PurePosixPath, tuple[bytes, int]] | None:
    data_dir = volume_dir / _DATA
    if not data_dir.is_symlink():
        return None
    found = {}
    base = data_dir.resolve()
    for path in base.rglob("*"):
        if path.is_file():
            found[PurePosixPath(path.relative_to(base).as_posix())] = (
                path.read_bytes(),
                path.stat().st_mode & 0o7777,
            )
    return found


def write_atomically(volume_dir: Path, files: Mapping[PurePosixPath, tuple[bytes, int]]) -> bool:
    """Makes ``volume_dir`` show exactly ``files``; False when it already did."""
    if _current_files(volume_dir) == dict(files):
        return False
    volume_dir.mkdir(parents=True, exist_ok=True)
    fresh = volume_dir / f"..{time.time_ns()}"
    fresh.mkdir(mode=0o755)
    for rel, (content, mode) in files.items():
        target = fresh / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(mode)
    old = (volume_dir / _DATA).resolve() if (volume_dir / _DATA).is_symlink() else None
    staged = volume_dir / "..data_tmp"
    with contextlib.suppress(FileNotFoundError):
        staged.unlink()
    staged.symlink_to(fresh.name)
    os.replace(staged, volume_dir / _DATA)
    tops = {rel.parts[0] for rel in files}
    for top in tops:
        link = volume_dir / top
        if not link.is_symlink():
            link.symlink_to(f"{_DATA}/{top}")
    for entry in volume_dir.iterdir():
        if not entry.name.startswith("..") and entry.name not in tops:
            entry.unlink()
    if old is not None and old != fresh:
        shutil.rmtree(old, ignore_errors=True)
    return True


#: Engine sockets on any node: whoever can talk to one owns the node.
WELL_KNOWN_ENGINE_SOCKETS: Final = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
)


class InstanceVolumes:
    """The volume directories of every instance on this node."""

    def __init__(
        self, root: Path, *, allow_host_path: bool, engine_sockets: tuple[str, ...] = ()
    ) -> None:
        self._root = root
        self._allow_host_path = allow_host_path
        sockets = (*engine_sockets, *WELL_KNOWN_ENGINE_SOCKETS)
        self._engine_sockets = frozenset(
            p for s in sockets for p in (Path(os.path.normpath(s)), Path(s).resolve())
        )

    def instance_dir(self, uid: UID) -> Path:
        return self._root / uid

    def prepare(self, instance: Instance, resolver: ReferenceResolver) -> dict[str, str]:
        """Creates or refreshes every volume; returns the host path of each by name."""
        uid = instance.metadata.uid
        namespace = instance.metadata.namespace or "default"
        assert uid is not None
        paths = {}
        for volume in instance.spec.volumes or ():
            paths[volume.name] = str(self._prepare_one(uid, namespace, volume, resolver))
        return paths

    def _prepare_one(
        self, uid: UID, namespace: str, volume: Volume, resolver: ReferenceResolver
    ) -> Path:
        where = self.instance_dir(uid) / volume.name
        if volume.empty_dir is not None:
            if not where.is_dir():
                where.mkdir(parents=True, exist_ok=True)
                # Any user the container runs as may write there, as with the kubelet.
                where.chmod(0o777)
            return where
        if (cm := volume.config_map) is not None:
            files = projected_files(
                resolver.config_map(namespace, cm.name),
                items=cm.items,
                default_mode=cm.default_mode,
                optional=bool(cm.optional),
                what=f'configmap "{cm.name}"',
            )
            write_atomically(where, files)
            return where
        if (sec := volume.secret) is not None:
            files = projected_files(
                resolver.secret(namespace, sec.secret_name),
                items=sec.items,
                default_mode=sec.default_mode,
                optional=bool(sec.optional),
                what=f'secret "{sec.secret_name}"',
            )
            write_atomically(where, files)
            return where
        if (host := volume.host_path) is not None:
            return self._host_path(host.path, host.type or "")
        raise ContainerConfigError(f"volume {volume.name}: no supported source")

    def _host_path(self, path: str, kind: str) -> Path:
        if not self._allow_host_path:
            raise ContainerConfigError("hostPath volumes are not allowed on this node")
        target = Path(path)
        # Resolved: a symlink or "/run/../run" must not reach the socket either. The socket
        # itself or any directory above it would hand the workload the engine.
        candidates = {Path(os.path.normpath(path)), target.resolve()}
        for socket in self._engine_sockets:
            if any(c == socket or c in socket.parents for c in candidates):
                raise ContainerConfigError(
                    f"hostPath {path} would expose the container engine's socket"
                )
        if kind == "DirectoryOrCreate":
            target.mkdir(parents=True, exist_ok=True)
        elif kind == "FileOrCreate":
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(exist_ok=True)
        elif kind == "Directory" and not target.is_dir():
            raise ContainerConfigError(f"hostPath {path} is not a directory")
        elif kind == "File" and not target.is_file():
            raise ContainerConfigError(f"hostPath {path} is not a file")
        elif kind in ("Socket", "CharDevice", "BlockDevice") and not target.exists():
            raise ContainerConfigError(f"hostPath {path} does not exist")
        return target

    def remove(self, uid: UID) -> None:
        shutil.rmtree(self.instance_dir(uid), ignore_errors=True)

    def known_uids(self) -> set[UID]:
        if not self._root.is_dir():
            return set()
        return {UID(p.name) for p in self._root.iterdir() if p.is_dir()}
