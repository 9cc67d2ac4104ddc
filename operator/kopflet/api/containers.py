"""Containers of an Instance: the core ``Container`` subset kopflet runs on Docker."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from kopflet.api._codec import Model, wire
from kopflet.api._quantity import QuantityValue
from kopflet.api.images import ImagePullPolicy, effective_image_pull_policy
from kopflet.api.probes import Probe
from kopflet.api.volumes import VolumeMount

Protocol = Literal["TCP", "UDP"]


@dataclass(frozen=True, kw_only=True)
class ConfigMapKeySelector(Model):
    name: str
    key: str
    optional: bool | None = None


@dataclass(frozen=True, kw_only=True)
class SecretKeySelector(Model):
    name: str
    key: str
    optional: bool | None = None


@dataclass(frozen=True, kw_only=True)
class ObjectFieldSelector(Model):
    """Downward API: ``metadata.name``, ``metadata.namespace``, ``metadata.uid``,
    ``metadata.labels['k']``, ``metadata.annotations['k']``, ``spec.nodeName``,
    ``status.instanceIP``, ``status.hostIP``."""

    field_path: str
    api_version: str | None = None


@dataclass(frozen=True, kw_only=True)
class EnvVarSource(Model):
    """Exactly one reference is set (the CRD enforces it)."""

    config_map_key_ref: ConfigMapKeySelector | None = None
    secret_key_ref: SecretKeySelector | None = None
    field_ref: ObjectFieldSelector | None = None


@dataclass(frozen=True, kw_only=True)
class EnvVar(Model):
    name: str
    value: str | None = None
    value_from: EnvVarSource | None = None


@dataclass(frozen=True, kw_only=True)
class ConfigMapEnvSource(Model):
    name: str
    optional: bool | None = None


@dataclass(frozen=True, kw_only=True)
class SecretEnvSource(Model):
    name: str
    optional: bool | None = None


@dataclass(frozen=True, kw_only=True)
class EnvFromSource(Model):
    prefix: str | None = None
    config_map_ref: ConfigMapEnvSource | None = None
    secret_ref: SecretEnvSource | None = None


@dataclass(frozen=True, kw_only=True)
class ContainerPort(Model):
    container_port: int
    name: str | None = None
    protocol: Protocol | None = None
    host_port: int | None = None
    host_ip: str | None = field(default=None, metadata=wire("hostIP"))


@dataclass(frozen=True, kw_only=True)
class ResourceRequirements(Model):
    """``cpu`` and ``memory`` quantities; the CRD checks limits >= requests."""

    requests: Mapping[str, QuantityValue] | None = None
    limits: Mapping[str, QuantityValue] | None = None

    def effective_requests(self) -> Mapping[str, QuantityValue]:
        """Core rule: a resource with a limit and no request requests its limit."""
        return {**(self.limits or {}), **(self.requests or {})}


@dataclass(frozen=True, kw_only=True)
class Capabilities(Model):
    add: tuple[str, ...] | None = None
    drop: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class SecurityContext(Model):
    """The subset of the core container ``securityContext`` Docker can honour."""

    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_non_root: bool | None = None
    privileged: bool | None = None
    read_only_root_filesystem: bool | None = None
    allow_privilege_escalation: bool | None = None
    capabilities: Capabilities | None = None


@dataclass(frozen=True, kw_only=True)
class Container(Model):
    name: str
    image: str
    image_pull_policy: ImagePullPolicy | None = None
    command: tuple[str, ...] | None = None
    args: tuple[str, ...] | None = None
    working_dir: str | None = None
    env: tuple[EnvVar, ...] | None = None
    env_from: tuple[EnvFromSource, ...] | None = None
    ports: tuple[ContainerPort, ...] | None = None
    resources: ResourceRequirements | None = None
    volume_mounts: tuple[VolumeMount, ...] | None = None
    liveness_probe: Probe | None = None
    readiness_probe: Probe | None = None
    startup_probe: Probe | None = None
    security_context: SecurityContext | None = None

    @property
    def effective_image_pull_policy(self) -> ImagePullPolicy:
        """``imagePullPolicy`` as set, or resolved by the core rule from the image tag."""
        return effective_image_pull_policy(self.image, self.image_pull_policy)

    def port_named(self, name: str) -> ContainerPort | None:
        return next((p for p in self.ports or () if p.name == name), None)
