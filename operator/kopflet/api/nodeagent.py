"""NodeAgent: one per node (cluster-scoped, named after the node)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from kopflet.api._codec import Model, wire
from kopflet.api._quantity import QuantityValue
from kopflet.api.constants import API_VERSION
from kopflet.api.meta import Condition, ObjectMeta

AddressType = Literal["InternalIP", "ExternalIP", "Hostname"]
ProxyMode = Literal["iptables", "nftables", "userspace"]


@dataclass(frozen=True, kw_only=True)
class NodeAgentSpec(Model):
    """``instance_cidr`` is the node's instance subnet, allocated by the controller's
    IPAM unless set; ``unschedulable`` keeps the scheduler from binding new Instances."""

    instance_cidr: str | None = field(default=None, metadata=wire("instanceCIDR"))
    unschedulable: bool | None = None


@dataclass(frozen=True, kw_only=True)
class NodeAddress(Model):
    type: AddressType
    address: str


@dataclass(frozen=True, kw_only=True)
class NodeInfo(Model):
    engine_version: str | None = None
    kernel_version: str | None = None
    agent_version: str | None = None
    proxy_mode: ProxyMode | None = None
    os_image: str | None = None
    architecture: str | None = None


@dataclass(frozen=True, kw_only=True)
class NodeAgentStatus(Model):
    """``capacity`` / ``allocatable`` hold ``cpu``, ``memory`` and ``instances``
    quantities; ``instances`` counts the Instances running on the node."""

    addresses: tuple[NodeAddress, ...] | None = None
    capacity: Mapping[str, QuantityValue] | None = None
    allocatable: Mapping[str, QuantityValue] | None = None
    node_info: NodeInfo | None = None
    conditions: tuple[Condition, ...] | None = None
    instances: int | None = None
    observed_generation: int | None = None


@dataclass(frozen=True, kw_only=True)
class NodeAgent(Model):
    metadata: ObjectMeta
    spec: NodeAgentSpec | None = None
    status: NodeAgentStatus | None = None
    api_version: str = API_VERSION
    kind: str = "NodeAgent"
