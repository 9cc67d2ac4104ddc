"""Typed lookups over the in-memory indices of watched objects (see ``object_index``).

The indices are kopf's, filled from its list+watch streams; tests build the same shape from a
list of objects with :meth:`ClusterCache.from_objects`. Reads only: nothing here talks to the
API server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from kopflet.api import Instance, NodeAgent, ProxyService, Workload
from kopflet.controller import object_index as ix
from kopflet.controller.instance_state import ObjectKey

T = TypeVar("T")

Index = Mapping[ix.IndexKey, Iterable[Any]]


def _build(objects: Iterable[Any], index: Any) -> dict[ix.IndexKey, list[Any]]:
    out: dict[ix.IndexKey, list[Any]] = {}
    for obj in objects:
        for key, value in (index(obj) or {}).items():
            out.setdefault(key, []).append(value)
    return out


class ClusterCache:
    def __init__(
        self,
        *,
        instances: Index,
        workloads: Index,
        services: Index,
        nodes: Index,
        leases: Index,
    ) -> None:
        self._instances = instances
        self._workloads = workloads
        self._services = services
        self._nodes = nodes
        self._leases = leases
        #: UIDs of objects known to be deleted although the index still holds them.
        self.ghosts: set[str] = set()

    @classmethod
    def from_objects(
        cls,
        *,
        instances: Iterable[Mapping[str, Any]] = (),
        workloads: Iterable[Mapping[str, Any]] = (),
        services: Iterable[Mapping[str, Any]] = (),
        nodes: Iterable[Mapping[str, Any]] = (),
        leases: Iterable[Mapping[str, Any]] = (),
    ) -> ClusterCache:
        """A cache of manifests (dicts), indexed exactly as the running controller indexes."""
        return cls(
            instances=_build(instances, ix.index_instance),
            workloads=_build(workloads, ix.index_workload),
            services=_build(services, ix.index_service),
            nodes=_build(nodes, ix.index_node),
            leases=_build(leases, ix.index_lease),
        )

    def _all(self, index: Index, key: ix.IndexKey) -> list[Any]:
        found = index.get(key)
        if not found:
            return []
        if not self.ghosts:
            return list(found)
        return [o for o in found if _uid(o) not in self.ghosts]

    def _one(self, index: Index, key: ix.IndexKey) -> Any:
        return next(iter(self._all(index, key)), None)

    def forget_deleted(self, live_uids: set[str], *, known_before: set[str]) -> int:
        """Objects that were cached before a fresh list and are missing from it were deleted
        while a watch was being re-established (kopf re-lists after a 410 and never hears of
        them again): hide them for good — UIDs are never reused. Returns how many."""
        gone = known_before - live_uids
        self.ghosts |= gone
        return len(gone)

    def uids(self, kind: str) -> set[str]:
        index = {
            "instances": self._instances,
            "workloads": self._workloads,
            "proxyservices": self._services,
            "nodeagents": self._nodes,
        }[kind]
        return {_uid(o) for o in index.get(ix.ALL) or ()}

    def instance(self, key: ObjectKey) -> Instance | None:
        found: Instance | None = self._one(self._instances, ix.instance_key(*_parts(key)))
        return found

    def all_instances(self) -> list[Instance]:
        return self._all(self._instances, ix.ALL)

    def instances_owned_by(self, uid: str) -> list[Instance]:
        return self._all(self._instances, ix.owned_by(uid))

    def instances_on(self, node: str) -> list[Instance]:
        return self._all(self._instances, ix.on_node(node))

    def instances_in(self, namespace: str) -> list[Instance]:
        return self._all(self._instances, ix.instances_in(namespace))

    def unbound_instances(self) -> list[Instance]:
        return self._all(self._instances, ix.UNBOUND)

    def has_unbound_instances(self) -> bool:
        return bool(self._instances.get(ix.UNBOUND))

    def workload(self, key: ObjectKey) -> Workload | None:
        found: Workload | None = self._one(self._workloads, ix.workload_key(*_parts(key)))
        return found

    def workloads(self) -> list[Workload]:
        return self._all(self._workloads, ix.ALL)

    def service(self, key: ObjectKey) -> ProxyService | None:
        found: ProxyService | None = self._one(self._services, ix.service_key(*_parts(key)))
        return found

    def services(self) -> list[ProxyService]:
        return self._all(self._services, ix.ALL)

    def services_in(self, namespace: str) -> list[ProxyService]:
        return self._all(self._services, ix.services_in(namespace))

    def node(self, name: str) -> NodeAgent | None:
        found: NodeAgent | None = self._one(self._nodes, ix.node_key(name))
        return found

    def nodes(self) -> list[NodeAgent]:
        return self._all(self._nodes, ix.ALL)

    def lease(self, name: str) -> ix.LeaseObservation | None:
        found: ix.LeaseObservation | None = self._one(self._leases, ix.lease_key(name))
        return found


def _parts(key: ObjectKey) -> tuple[str, str]:
    return key.namespace, key.name


def _uid(obj: Any) -> str:
    meta = getattr(obj, "metadata", None)
    return str(meta.uid) if meta is not None else ""
