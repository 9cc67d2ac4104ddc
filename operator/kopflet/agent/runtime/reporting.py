"""What the runtime half tells the rest of the agent: statuses, cleanups, Kubernetes Events.

The agent's main loop implements :class:`RuntimeReporter` over the API (patch
``/status``, drop the finalizer, post Events). The engine is its single caller for
Instance status, so there is one writer per status, as the design asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from kopflet.api import UID, Instance, InstanceStatus

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True, kw_only=True)
class InstanceRef:
    """Enough to address an Instance, also after it left the API (from container labels)."""

    uid: UID
    name: str
    namespace: str

    @classmethod
    def of(cls, instance: Instance) -> InstanceRef:
        meta = instance.metadata
        assert meta.uid is not None
        return cls(uid=meta.uid, name=meta.name or "", namespace=meta.namespace or "default")


class RuntimeReporter(Protocol):
    async def instance_status(self, instance: Instance, status: InstanceStatus) -> None:
        """Patch ``/status``; raise to have the engine retry on a later pass."""

    def overwritten(self, instance: Instance) -> bool:
        """The watched copy is past our last status write but holds another status: write it
        again even though it did not change here."""

    async def instance_cleaned_up(self, instance: Instance) -> None:
        """A deleted instance holds nothing on this node any more: its finalizer may go."""

    def event(self, ref: InstanceRef, *, type: EventType, reason: str, message: str) -> None:
        """Record a Kubernetes Event about the instance; must not block."""
