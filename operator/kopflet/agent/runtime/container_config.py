"""Translate one spec container into the engine's terms (a :class:`ContainerRequest`). Pure.

Limits become Docker's CPU and memory limits (requests only matter to the scheduler);
``no-new-privileges`` is on unless the spec allows escalation; privileged containers,
capabilities beyond the engine's default set and hostPath volumes are refused unless the
agent's configuration allows them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from kopflet.agent.runtime.container_runtime import ContainerRequest, Mount, NetworkAttachment
from kopflet.agent.runtime.environment import ContainerConfigError, expand
from kopflet.agent.runtime.labels import ContainerID, ContainerLabels
from kopflet.api import Container, Instance, cpu_nanos, memory_bytes

#: What every container of the engine has anyway (Docker's default set): adding one of these
#: grants nothing, so it needs no permission.
DEFAULT_CAPABILITIES: Final = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "NET_RAW",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)


def capability_name(name: str) -> str:
    """``net_admin``, ``CAP_NET_ADMIN`` → ``NET_ADMIN``."""
    upper = name.upper()
    return upper.removeprefix("CAP_")


@dataclass(frozen=True, kw_only=True)
class ContainerPolicy:
    """What the node's agent permits beyond the defaults."""

    allow_privileged: bool = False
    #: Capabilities a container may add beyond ``DEFAULT_CAPABILITIES`` (``ALL``: any).
    allowed_capabilities: frozenset[str] = field(default_factory=frozenset)

    def refused_capabilities(self, added: tuple[str, ...]) -> list[str]:
        if "ALL" in self.allowed_capabilities:
            return []
        allowed = DEFAULT_CAPABILITIES | self.allowed_capabilities
        return sorted({c for c in added if c not in allowed})


def _user(container: Container, image_user: str) -> str | None:
    ctx = container.security_context
    if ctx is None:
        return None
    if ctx.run_as_non_root:
        effective = str(ctx.run_as_user) if ctx.run_as_user is not None else image_user
        uid = effective.split(":", 1)[0]
        if uid in ("", "0", "root"):
            raise ContainerConfigError(
                "container has runAsNonRoot and image will run as root"
                if ctx.run_as_user is None
                else "container's runAsUser breaks non-root policy"
            )
        if not uid.isdigit():
            raise ContainerConfigError(
                f"container has runAsNonRoot and image has non-numeric user ({uid}), "
                "cannot verify user is non-root"
            )
    if ctx.run_as_user is None:
        # A group alone cannot be expressed to Docker without the image's user.
        return None
    if ctx.run_as_group is not None:
        return f"{ctx.run_as_user}:{ctx.run_as_group}"
    return str(ctx.run_as_user)


def _mounts(
    instance: Instance, container: Container, volume_paths: Mapping[str, str]
) -> tuple[Mount, ...]:
    mounts = []
    for mount in container.volume_mounts or ():
        if mount.name not in volume_paths:
            raise ContainerConfigError(f"volume {mount.name!r} is not prepared")
        volume = instance.spec.volume_named(mount.name)
        projected = volume is not None and (
            volume.config_map is not None or volume.secret is not None
        )
        source = volume_paths[mount.name]
        if mount.sub_path:
            if mount.sub_path.startswith("/") or ".." in mount.sub_path.split("/"):
                raise ContainerConfigError(f"invalid subPath {mount.sub_path!r}")
            source = f"{source}/{mount.sub_path}"
        mounts.append(
            Mount(
                source=source,
                target=mount.mount_path,
                # The kubelet mounts configMap and secret volumes read-only, always.
                read_only=bool(mount.read_only) or projected,
            )
        )
    return tuple(mounts)


def container_request(
    *,
    instance: Instance,
    container: Container,
    labels: ContainerLabels,
    sandbox_id: ContainerID | None = None,
    attachment: NetworkAttachment | None = None,
    env: Mapping[str, str],
    volume_paths: Mapping[str, str],
    policy: ContainerPolicy,
    image_user: str = "",
) -> ContainerRequest:
    ctx = container.security_context
    privileged = bool(ctx and ctx.privileged)
    if privileged and not policy.allow_privileged:
        raise ContainerConfigError("privileged containers are not allowed on this node")
    limits = (container.resources.limits if container.resources else None) or {}
    caps = ctx.capabilities if ctx else None
    cap_add = tuple(capability_name(c) for c in (caps.add or ())) if caps else ()
    refused = policy.refused_capabilities(cap_add)
    if refused and not privileged:
        raise ContainerConfigError(
            f"capabilities {', '.join(refused)} are not allowed on this node"
        )
    escalation = bool(ctx and ctx.allow_privilege_escalation)
    command = tuple(expand(part, env) for part in container.command or ()) or None
    args = container.args
    return ContainerRequest(
        labels=labels,
        sandbox_id=sandbox_id,
        attachment=attachment,
        image=container.image,
        entrypoint=command,
        args=tuple(expand(part, env) for part in args) if args is not None else None,
        env=tuple(env.items()),
        working_dir=container.working_dir or None,
        nano_cpus=cpu_nanos(limits["cpu"]) if "cpu" in limits else None,
        memory_bytes=memory_bytes(limits["memory"]) if "memory" in limits else None,
        user=_user(container, image_user),
        read_only_rootfs=bool(ctx and ctx.read_only_root_filesystem),
        privileged=privileged,
        cap_add=cap_add,
        cap_drop=tuple(capability_name(c) for c in (caps.drop or ())) if caps else (),
        no_new_privileges=not (privileged or escalation),
        mounts=_mounts(instance, container, volume_paths),
    )
