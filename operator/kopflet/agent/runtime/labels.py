"""The labels and names that mark a Docker container as ours, and how to read them back.

Labels are the runtime's only record of what a container is for (DESIGN: no local state
files), so everything the planner needs about an observed container is written here at
creation time: which instance it belongs to, which container of the spec it runs, the
hash of the spec it was created from, its attempt number and its grace period (a
container whose Instance is already gone from the API must still be stopped politely).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, NewType

from kopflet.api import UID

#: A Docker container id (the full 64 hex digits).
ContainerID = NewType("ContainerID", str)

_PREFIX: Final = "dev.kopflet."
ROLE_LABEL: Final = _PREFIX + "role"
NODE_LABEL: Final = _PREFIX + "node"
INSTANCE_UID_LABEL: Final = _PREFIX + "instance-uid"
INSTANCE_NAME_LABEL: Final = _PREFIX + "instance-name"
INSTANCE_NAMESPACE_LABEL: Final = _PREFIX + "instance-namespace"
CONTAINER_NAME_LABEL: Final = _PREFIX + "container-name"
SPEC_HASH_LABEL: Final = _PREFIX + "spec-hash"
RESTART_COUNT_LABEL: Final = _PREFIX + "restart-count"
GRACE_PERIOD_LABEL: Final = _PREFIX + "termination-grace-period"
INSTANCE_IP_LABEL: Final = _PREFIX + "instance-ip"


class ContainerRole(StrEnum):
    #: Holds the instance's network namespace; runs nothing of the user's.
    SANDBOX = "sandbox"
    #: One container of the instance spec.
    APP = "app"


@dataclass(frozen=True, kw_only=True)
class ContainerLabels:
    """What a container's labels say about it; the only observed identity it has."""

    role: ContainerRole
    node: str
    instance_uid: UID
    instance_name: str
    instance_namespace: str
    #: The spec's container name; empty for a sandbox.
    container_name: str
    spec_hash: str
    #: 0 for the first container of a name (or sandbox), +1 for each restart.
    restart_count: int
    grace_period_seconds: int
    #: The address the instance holds on the node's network, chosen by the agent before
    #: the create (empty on containers of older agents, which let the engine choose).
    instance_ip: str = ""

    def render(self) -> dict[str, str]:
        labels = {
            ROLE_LABEL: self.role.value,
            NODE_LABEL: self.node,
            INSTANCE_UID_LABEL: self.instance_uid,
            INSTANCE_NAME_LABEL: self.instance_name,
            INSTANCE_NAMESPACE_LABEL: self.instance_namespace,
            CONTAINER_NAME_LABEL: self.container_name,
            SPEC_HASH_LABEL: self.spec_hash,
            RESTART_COUNT_LABEL: str(self.restart_count),
            GRACE_PERIOD_LABEL: str(self.grace_period_seconds),
        }
        if self.instance_ip:
            labels[INSTANCE_IP_LABEL] = self.instance_ip
        return labels

    @classmethod
    def parse(cls, labels: Mapping[str, str] | None) -> ContainerLabels | None:
        """The labels of one of our containers, ``None`` for anything else.

        A container that lacks one of our labels, or carries a value we could not have
        written, is not ours and must never be touched.
        """
        labels = labels or {}
        try:
            return cls(
                role=ContainerRole(labels[ROLE_LABEL]),
                node=labels[NODE_LABEL],
                instance_uid=UID(labels[INSTANCE_UID_LABEL]),
                instance_name=labels[INSTANCE_NAME_LABEL],
                instance_namespace=labels[INSTANCE_NAMESPACE_LABEL],
                container_name=labels[CONTAINER_NAME_LABEL],
                spec_hash=labels[SPEC_HASH_LABEL],
                restart_count=int(labels[RESTART_COUNT_LABEL]),
                grace_period_seconds=int(labels[GRACE_PERIOD_LABEL]),
                instance_ip=labels.get(INSTANCE_IP_LABEL, ""),
            )
        except (KeyError, ValueError):
            return None


_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]")


def container_name_for(labels: ContainerLabels) -> str:
    """The Docker name of a container, unique per (instance, container, attempt).

    Docker refuses a second container with the same name, so an agent that crashed
    between "create" and "record" and then retries cannot create a twin: the retry
    fails with a conflict instead.
    """
    what = "sandbox" if labels.role is ContainerRole.SANDBOX else labels.container_name
    parts = (
        "kopflet",
        what,
        labels.instance_name,
        labels.instance_namespace,
        labels.instance_uid,
        str(labels.restart_count),
    )
    return _UNSAFE.sub("-", "_".join(parts))
