"""The NodeAgent status this node's agent reports, computed from what it knows. Pure.

Ready follows the kubelet's rule of thumb: the node can run instances right now. It is
False while the engine does not answer, while the runtime's relist is stale (a hung
engine or a stuck agent), and while the node has no instance subnet yet (nothing could
get an address); True otherwise. Messages carry no counters or ages, so an unchanged
state renders an unchanged status and nothing is written.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from kopflet.agent.runtime import EngineInfo
from kopflet.api import (
    Condition,
    NodeAddress,
    NodeAgentStatus,
    NodeInfo,
    ProxyMode,
    find_condition,
    set_condition,
)
from kopflet.api.constants import CONDITION_READY, NODE_NOT_READY_REASON, NODE_READY_REASON

#: Instances a node takes, as the kubelet's default ``maxPods``.
DEFAULT_MAX_INSTANCES: Final = 110

_ARCHITECTURES: Final = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}


def go_architecture(machine: str | None = None) -> str:
    """The architecture as Kubernetes spells it (``amd64``, ``arm64``)."""
    machine = machine or platform.machine()
    return _ARCHITECTURES.get(machine, machine)


@dataclass(frozen=True, kw_only=True)
class NodeFacts:
    node_name: str
    address: str
    agent_version: str
    #: ``None`` while the engine has not answered.
    engine: EngineInfo | None
    engine_error: str | None = None
    #: ``None`` until the runtime engine runs (waiting for the instance subnet).
    runtime_healthy: bool | None = None
    instance_cidr: str | None = None
    proxy_mode: str | None = None
    architecture: str = ""
    instances: int = 0
    max_instances: int = DEFAULT_MAX_INSTANCES


def schema_proxy_mode(mode: str | None) -> ProxyMode | None:
    """The mode as the NodeAgent schema names it; an unknown one is not reported."""
    if mode == "iptables":
        return "iptables"
    if mode == "nftables":
        return "nftables"
    if mode == "userspace":
        return "userspace"
    return None


def ready_condition(facts: NodeFacts) -> Condition:
    if facts.engine is None or facts.engine_error:
        message = f"container engine unreachable: {facts.engine_error or 'no answer yet'}"
        return Condition(
            type=CONDITION_READY, status="False", reason=NODE_NOT_READY_REASON, message=message
        )
    if not facts.instance_cidr:
        return Condition(
            type=CONDITION_READY,
            status="False",
            reason=NODE_NOT_READY_REASON,
            message="waiting for spec.instanceCIDR (node IPAM of the controller)",
        )
    if facts.runtime_healthy is False:
        return Condition(
            type=CONDITION_READY,
            status="False",
            reason=NODE_NOT_READY_REASON,
            message="the runtime's relist of the container engine is stale",
        )
    return Condition(
        type=CONDITION_READY,
        status="True",
        reason=NODE_READY_REASON,
        message="agent is posting ready status",
    )


def capacity(engine: EngineInfo | None, max_instances: int) -> dict[str, str]:
    found = {"instances": str(max_instances)}
    if engine is not None:
        found["cpu"] = str(engine.cpus)
        found["memory"] = f"{engine.memory_bytes // 1024}Ki"
    return found


def node_status(
    facts: NodeFacts, *, previous: NodeAgentStatus | None, now: datetime
) -> NodeAgentStatus:
    """The full status to report; the Ready condition keeps its transition time unless
    its status flips."""
    engine = facts.engine
    info = NodeInfo(
        engine_version=engine.version if engine else None,
        kernel_version=(engine.kernel_version or None) if engine else None,
        agent_version=facts.agent_version,
        proxy_mode=schema_proxy_mode(facts.proxy_mode),
        os_image=(engine.operating_system or None) if engine else None,
        architecture=facts.architecture or None,
    )
    if previous is not None and previous.capacity and engine is None:
        # An engine that stopped answering did not lose its CPUs: keep what was known.
        resources: dict[str, Any] = dict(previous.capacity)
    else:
        resources = capacity(engine, facts.max_instances)
    conditions = set_condition(
        previous.conditions if previous else None, ready_condition(facts), now=now
    )
    return NodeAgentStatus(
        addresses=(
            NodeAddress(type="InternalIP", address=facts.address),
            NodeAddress(type="Hostname", address=facts.node_name),
        ),
        capacity=resources,
        allocatable=dict(resources),
        node_info=info,
        conditions=conditions,
        instances=facts.instances,
    )


def is_ready(status: NodeAgentStatus | None) -> bool:
    found = find_condition(status.conditions if status else None, CONDITION_READY)
    return found is not None and found.status == "True"
