"""The ProxyService loop: allocate the clusterIP and nodePorts, keep ``status.endpoints`` equal
to the ready Instances the selector matches, and say in the ``Allocated`` condition whether the
addresses are the service's own (a requested clusterIP or nodePort that another service holds
is refused there, with the holder's name).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from kopflet.api import Condition, ProxyService, set_condition
from kopflet.api.constants import PROXYSERVICE_KIND, PROXYSERVICE_PLURAL
from kopflet.controller.address_pools import AddressPool, PortPool
from kopflet.controller.allocator import Allocator, Holder
from kopflet.controller.cluster_cache import ClusterCache
from kopflet.controller.endpoints import service_endpoints, service_status
from kopflet.controller.events import EventRecorder, ref_of
from kopflet.controller.instance_state import ObjectKey
from kopflet.controller.kube_api import ClusterApi, Conflict, NotFound, custom_path

CONDITION_ALLOCATED = "Allocated"
#: ``spec.clusterIP: None`` asks for no virtual IP (a headless service), as in the core.
HEADLESS = "None"


@dataclass(frozen=True)
class _Problem:
    reason: str
    message: str


def holder_of(service: ProxyService) -> Holder:
    meta = service.metadata
    return Holder(
        kind=PROXYSERVICE_KIND,
        namespace=meta.namespace or "",
        name=meta.name or "",
        uid=str(meta.uid),
    )


def values_in_use(service: ProxyService) -> tuple[str | None, set[str]]:
    """The clusterIP and nodePorts a service's spec names (what its allocations must cover)."""
    ip = service.spec.cluster_ip
    ports = {str(p.node_port) for p in service.spec.ports if p.node_port is not None}
    return (ip if ip and ip != HEADLESS else None), ports


class ServiceSync:
    def __init__(
        self,
        cache: Callable[[], ClusterCache],
        api: ClusterApi,
        events: EventRecorder,
        allocator: Allocator,
        *,
        service_pool: AddressPool,
        node_port_pool: PortPool,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._cache = cache
        self._api = api
        self._events = events
        self._allocator = allocator
        self._ips = service_pool
        self._ports = node_port_pool
        self._now = now

    async def reconcile(self, key: ObjectKey) -> float | None:
        service = self._cache().service(key)
        if service is None or service.metadata.deletion_timestamp is not None:
            return None
        holder = holder_of(service)
        problems: list[_Problem] = []
        spec_patch = await self._allocate(service, holder, problems)
        if spec_patch:
            try:
                written = await self._api.merge_patch(
                    custom_path(PROXYSERVICE_PLURAL, namespace=key.namespace, name=key.name),
                    {
                        "metadata": {"resourceVersion": service.metadata.resource_version},
                        "spec": spec_patch,
                    },
                )
            except Conflict:
                return 0.1  # changed meanwhile; the records keep the values for the next pass
            except NotFound:
                await self._allocator.release_all(holder)
                return None
            service = ProxyService.from_dict(written)
        await self._release_unused(service, holder)
        if not await self._write_status(service, problems):
            return 0.1  # changed meanwhile (by hand, for a service without a selector): again
        return None

    async def _allocate(
        self, service: ProxyService, holder: Holder, problems: list[_Problem]
    ) -> dict[str, Any]:
        patch: dict[str, Any] = {}
        ip = service.spec.cluster_ip
        if not ip:
            got = await self._allocator.allocate("clusterip", self._ips, holder=holder)
            if got is None:
                problems.append(
                    _Problem("ClusterIPRangeFull", f"no free clusterIP left in {self._ips.network}")
                )
            else:
                patch["clusterIP"] = got
        elif ip != HEADLESS:
            if ip not in self._ips:
                problems.append(
                    _Problem(
                        "ClusterIPNotInRange",
                        f"clusterIP {ip} is not in the service range {self._ips.network}",
                    )
                )
            elif (other := await self._allocator.claim("clusterip", ip, holder=holder)) is not None:
                problems.append(
                    _Problem("ClusterIPConflict", f"clusterIP {ip} is already allocated to {other}")
                )

        if service.spec.type != "NodePort":
            return patch
        _, requested = values_in_use(service)
        ports = []
        changed = False
        for port in service.spec.ports:
            if port.node_port is None:
                got = await self._allocator.allocate(
                    "nodeport", self._ports, holder=holder, in_use_by_holder=requested
                )
                if got is None:
                    problems.append(
                        _Problem(
                            "NodePortRangeFull",
                            f"no free nodePort left in {self._ports.first}-{self._ports.last}",
                        )
                    )
                else:
                    requested.add(got)
                    port = replace(port, node_port=int(got))
                    changed = True
            elif str(port.node_port) not in self._ports:
                problems.append(
                    _Problem(
                        "NodePortNotInRange",
                        f"nodePort {port.node_port} is not in the range"
                        f" {self._ports.first}-{self._ports.last}",
                    )
                )
            elif (
                other := await self._allocator.claim("nodeport", str(port.node_port), holder=holder)
            ) is not None:
                problems.append(
                    _Problem(
                        "NodePortConflict",
                        f"nodePort {port.node_port} is already allocated to {other}",
                    )
                )
            ports.append(port.to_dict())
        if changed:
            patch["ports"] = ports
        return patch

    async def _release_unused(self, service: ProxyService, holder: Holder) -> None:
        """Values this service holds but no longer names (its type or ports changed)."""
        ip, ports = values_in_use(service)
        for value in self._allocator.held_by(holder, "clusterip"):
            if value != ip:
                await self._allocator.release("clusterip", value, holder=holder)
        for value in self._allocator.held_by(holder, "nodeport"):
            if value not in ports:
                await self._allocator.release("nodeport", value, holder=holder)

    async def _write_status(self, service: ProxyService, problems: list[_Problem]) -> bool:
        """``False`` if the service changed since it was read: the status is computed from
        that copy, and writing it unconditionally could put back endpoints that someone
        else has just written (a service without a selector has its endpoints by hand)."""
        meta = service.metadata
        selector = service.spec.selector
        endpoints = (
            service_endpoints(service, self._cache().instances_in(meta.namespace or ""))
            if selector
            else None
        )
        status = service_status(service, endpoints)
        if problems:
            condition = Condition(
                type=CONDITION_ALLOCATED,
                status="False",
                observed_generation=meta.generation,
                reason=problems[0].reason,
                message="; ".join(p.message for p in problems),
            )
            for problem in problems:
                self._events.record(
                    ref_of(service),
                    type="Warning",
                    reason=problem.reason,
                    action="Allocate",
                    note=problem.message,
                )
        else:
            ip, ports = values_in_use(service)
            what = [f"clusterIP {ip}"] if ip else []
            what += [f"nodePort {p}" for p in sorted(ports)]
            condition = Condition(
                type=CONDITION_ALLOCATED,
                status="True",
                observed_generation=meta.generation,
                reason="Allocated",
                message=("allocated " + ", ".join(what)) if what else "nothing to allocate",
            )
        status = replace(
            status, conditions=set_condition(status.conditions, condition, now=self._now())
        )
        if status == service.status:
            return True
        try:
            await self._api.merge_patch(
                custom_path(
                    PROXYSERVICE_PLURAL,
                    namespace=meta.namespace,
                    name=meta.name,
                    subresource="status",
                ),
                {
                    "metadata": {"resourceVersion": meta.resource_version},
                    "status": status.to_dict(),
                },
            )
        except NotFound:  # deleted meanwhile: its DELETED event follows
            return True
        except Conflict:
            return False
        return True
