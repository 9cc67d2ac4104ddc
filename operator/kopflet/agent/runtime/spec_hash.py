"""Hashes of what a container was created from: a changed hash means "recreate it".

Only the spec goes in, never resolved values (ConfigMap contents, the instance IP): like
the kubelet, editing a ConfigMap refreshes mounted files but restarts nothing.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kopflet.api import Container, InstanceSpec


def _digest(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def container_spec_hash(container: Container) -> str:
    return _digest(container.to_dict())


def sandbox_spec_hash(spec: InstanceSpec, *, instance_name: str) -> str:
    """What the sandbox holds for the instance: its hostname and its host ports."""
    host_ports = sorted(
        (p.container_port, p.protocol or "TCP", p.host_port, p.host_ip or "")
        for c in spec.containers
        for p in c.ports or ()
        if p.host_port
    )
    return _digest({"hostname": spec.hostname or instance_name, "hostPorts": host_ports})


def solo_spec_hash(container: Container, spec: InstanceSpec, *, instance_name: str) -> str:
    """The one container of an instance without a sandbox carries what the sandbox would
    have (hostname, host ports): a change to either recreates it."""
    return _digest(
        {
            "container": container_spec_hash(container),
            "sandbox": sandbox_spec_hash(spec, instance_name=instance_name),
        }
    )
