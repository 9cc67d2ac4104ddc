"""What every proxy mode offers the sync loop: program this state, check the canary.

A proxier is told the whole desired state on every sync plus which service-ports
changed since the previous one; it decides what it can skip. Any exception from
:meth:`Proxier.sync` means "not programmed": the loop retries with a full sync.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Protocol

from kopflet.agent.proxy.model import ProxyMode, ServicePortInfo, ServicePortName


@dataclass(frozen=True)
class ProxyState:
    """The desired state of one sync: every service-port, and every node's instance
    subnet (ours included), which forwarding must let through."""

    service_ports: Mapping[ServicePortName, ServicePortInfo] = field(default_factory=dict)
    instance_cidrs: tuple[str, ...] = ()


@dataclass(frozen=True)
class SyncOutcome:
    full: bool
    #: Rules (or listeners, in userspace mode) in place after the sync, ours only.
    rules_programmed: int


class Proxier(Protocol):
    @property
    def mode(self) -> ProxyMode: ...

    async def sync(
        self, state: ProxyState, *, changed: Set[ServicePortName], full: bool
    ) -> SyncOutcome:
        """Program ``state``. ``full=False`` allows skipping what didn't change since
        the last successful sync; the proxier may still choose to do a full one."""
        ...

    async def canary_intact(self) -> bool:
        """``False`` if someone removed our rules behind our back (a flush)."""
        ...

    async def close(self) -> None:
        """Stop what runs in-process (userspace listeners); programmed rules stay."""
        ...
