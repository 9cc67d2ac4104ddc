"""Change trackers: watch callbacks record here, the sync loop drains.

Like kube-proxy's service and endpoints change trackers: for every key the tracker
remembers the value as of the last drain (``previous``) and the newest one seen
(``current``). An update that brings a key back to its previous value cancels out
and is dropped, so a flapping object costs no sync. Pure data, no i/o.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from kopflet.agent.proxy.model import NodeName, NodeRoute, ServicePortInfo, ServicePortName

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class Change(Generic[V]):
    """``None`` stands for absent: ``previous=None`` is an addition, ``current=None`` a removal."""

    previous: V | None
    current: V | None


class ChangeTracker(Generic[K, V]):
    """Pending changes per key against the state applied by the last :meth:`drain`."""

    def __init__(self) -> None:
        self._applied: dict[K, V] = {}
        self._pending: dict[K, Change[V]] = {}

    def update(self, key: K, current: V | None) -> None:
        pending = self._pending.get(key)
        previous = pending.previous if pending is not None else self._applied.get(key)
        if previous == current:
            self._pending.pop(key, None)
        else:
            self._pending[key] = Change(previous=previous, current=current)

    def current(self, key: K) -> V | None:
        """The newest value seen for ``key`` (pending or applied)."""
        pending = self._pending.get(key)
        return pending.current if pending is not None else self._applied.get(key)

    def keys(self) -> set[K]:
        """Every key that exists now, counting pending additions and removals."""
        keys = set(self._applied) | set(self._pending)
        return {k for k in keys if self.current(k) is not None}

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def drain(self) -> dict[K, Change[V]]:
        """Apply and return every pending change; the tracker then has none."""
        changes, self._pending = self._pending, {}
        for key, change in changes.items():
            if change.current is None:
                self._applied.pop(key, None)
            else:
                self._applied[key] = change.current
        return changes

    @property
    def applied(self) -> Mapping[K, V]:
        """The state as of the last drain: what the last sync was computed from."""
        return self._applied


class ServiceChangeTracker(ChangeTracker[ServicePortName, ServicePortInfo]):
    """Per service-port; one ProxyService event updates all of its ports at once."""

    def __init__(self) -> None:
        super().__init__()
        # The ports each service has now, so an event need not scan every key.
        self._ports_of: dict[tuple[str, str], set[ServicePortName]] = {}

    def update_service(
        self, service: tuple[str, str], ports: Mapping[ServicePortName, ServicePortInfo]
    ) -> None:
        """Replace every port of ``service`` by ``ports`` (empty for a deleted service)."""
        known = self._ports_of.pop(service, set())
        for key in known | set(ports):
            self.update(key, ports.get(key))
        if ports:
            self._ports_of[service] = set(ports)


class NodeChangeTracker(ChangeTracker[NodeName, NodeRoute]):
    """Per node: its instance subnet and address, once both are known."""

    def update_nodes(self, routes: Iterable[tuple[NodeName, NodeRoute | None]]) -> None:
        for name, route in routes:
            self.update(name, route)
