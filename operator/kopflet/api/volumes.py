"""Volumes an Instance declares and containers mount (emptyDir, configMap, secret, hostPath)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kopflet.api._codec import Model
from kopflet.api._quantity import QuantityValue

HostPathType = Literal[
    "",
    "DirectoryOrCreate",
    "Directory",
    "FileOrCreate",
    "File",
    "Socket",
    "CharDevice",
    "BlockDevice",
]


@dataclass(frozen=True, kw_only=True)
class KeyToPath(Model):
    key: str
    path: str
    mode: int | None = None


@dataclass(frozen=True, kw_only=True)
class EmptyDirVolumeSource(Model):
    medium: Literal["", "Memory"] | None = None
    size_limit: QuantityValue | None = None


@dataclass(frozen=True, kw_only=True)
class ConfigMapVolumeSource(Model):
    name: str
    items: tuple[KeyToPath, ...] | None = None
    default_mode: int | None = None
    optional: bool | None = None


@dataclass(frozen=True, kw_only=True)
class SecretVolumeSource(Model):
    secret_name: str
    items: tuple[KeyToPath, ...] | None = None
    default_mode: int | None = None
    optional: bool | None = None


@dataclass(frozen=True, kw_only=True)
class HostPathVolumeSource(Model):
    path: str
    type: HostPathType | None = None


@dataclass(frozen=True, kw_only=True)
class Volume(Model):
    """A named volume; exactly one source is set (the CRD enforces it)."""

    name: str
    empty_dir: EmptyDirVolumeSource | None = None
    config_map: ConfigMapVolumeSource | None = None
    secret: SecretVolumeSource | None = None
    host_path: HostPathVolumeSource | None = None


@dataclass(frozen=True, kw_only=True)
class VolumeMount(Model):
    """Mounts the volume ``name`` of the same Instance (the CRD checks that it exists)."""

    name: str
    mount_path: str
    read_only: bool | None = None
    sub_path: str | None = None
