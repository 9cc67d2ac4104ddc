"""Node IPAM: give every NodeAgent an instance subnet of its own (``spec.instanceCIDR``).

The subnet is allocated through the :class:`Allocator` (a record per subnet, owned by the
NodeAgent), then written into the NodeAgent's spec, conditional on its resourceVersion. The
CRD makes ``instanceCIDR`` immutable once set, so a node keeps its subnet for its lifetime,
across controller restarts.
"""

from __future__ import annotations

from collections.abc import Callable

from loguru import logger

from kopflet.api import NodeAgent
from kopflet.api.constants import API_VERSION, NODEAGENT_KIND, NODEAGENT_PLURAL
from kopflet.controller.address_pools import AllocationKind, SubnetPool
from kopflet.controller.allocator import Allocator, Holder
from kopflet.controller.cluster_cache import ClusterCache
from kopflet.controller.events import EventRecorder, ref_of
from kopflet.controller.kube_api import ApiError, ClusterApi, NotFound, custom_path

KIND: AllocationKind = "instancecidr"
#: Look again this often while the cluster CIDR has no free subnet.
EXHAUSTED_RETRY_SECONDS = 30.0


def holder_of(node: NodeAgent) -> Holder:
    return Holder(
        kind=NODEAGENT_KIND, namespace="", name=node.metadata.name or "", uid=str(node.metadata.uid)
    )


def owner_reference(node: NodeAgent) -> dict[str, object]:
    return {
        "apiVersion": API_VERSION,
        "kind": NODEAGENT_KIND,
        "name": node.metadata.name,
        "uid": node.metadata.uid,
    }


class NodeIpam:
    def __init__(
        self,
        cache: Callable[[], ClusterCache],
        api: ClusterApi,
        events: EventRecorder,
        allocator: Allocator,
        *,
        pool: SubnetPool,
    ) -> None:
        self._cache = cache
        self._api = api
        self._events = events
        self._allocator = allocator
        self._pool = pool

    async def reconcile(self, name: str) -> float | None:
        node = self._cache().node(name)
        if node is None or node.metadata.deletion_timestamp is not None:
            return None
        holder = holder_of(node)
        owner = owner_reference(node)
        current = node.spec.instance_cidr if node.spec else None
        if current:
            # Set by us earlier, or by hand: make sure its record is there and is this node's.
            other = await self._allocator.claim(KIND, current, holder=holder, owner=owner)
            if other is not None:
                self._events.record(
                    ref_of(node),
                    type="Warning",
                    reason="CIDRNotAvailable",
                    action="Allocate",
                    note=f"instanceCIDR {current} is also allocated to {other}",
                )
            return None
        subnet = await self._allocator.allocate(KIND, self._pool, holder=holder, owner=owner)
        if subnet is None:
            self._events.record(
                ref_of(node),
                type="Warning",
                reason="CIDRNotAvailable",
                action="Allocate",
                note=f"no free /{self._pool.prefix} subnet left in {self._pool.network}",
            )
            return EXHAUSTED_RETRY_SECONDS
        try:
            # Not conditional on the resourceVersion (the agent's status writes change it every
            # few seconds): the CRD refuses to change an instanceCIDR once set, which is the
            # only race that matters here.
            await self._api.merge_patch(
                custom_path(NODEAGENT_PLURAL, name=name), {"spec": {"instanceCIDR": subnet}}
            )
        except NotFound:
            await self._allocator.release(KIND, subnet, holder=holder)
            return None
        except ApiError as error:
            if error.status != 422:
                raise
            logger.warning("node {}: instanceCIDR not set: {}", name, error.message)
            await self._allocator.release(KIND, subnet, holder=holder)
            return 0.5
        logger.info("node {}: instanceCIDR {}", name, subnet)
        self._events.record(
            ref_of(node),
            type="Normal",
            reason="CIDRAssigned",
            action="Allocate",
            note=f"Node {name} got instance subnet {subnet}",
        )
        return None
