"""The node lifecycle loop: watch the nodes' Leases, mark silent nodes ``Ready=Unknown``, evict
their Instances, and release evicted Instances a dead agent can no longer finalize
(``node_health`` decides; this module re-reads, observes heartbeats, acts).

Also the Instance garbage collector's one job the core's PodGC does: Instances bound to a node
that no longer exists at all are deleted after the grace period.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from loguru import logger

from kopflet.api import Condition, Instance, NodeAgent, set_condition
from kopflet.api.constants import (
    CONDITION_READY,
    INSTANCE_PLURAL,
    NODE_STATUS_UNKNOWN_REASON,
    NODEAGENT_PLURAL,
)
from kopflet.controller.cluster_cache import ClusterCache
from kopflet.controller.events import EventRecorder, ref_of
from kopflet.controller.instance_state import AGENT_FINALIZER_PREFIX, key_of
from kopflet.controller.kube_api import ApiError, ClusterApi, Conflict, NotFound, custom_path
from kopflet.controller.node_health import plan_node_health


@dataclass
class _Heartbeat:
    version: str | None
    seen_at: float


class NodeLifecycle:
    def __init__(
        self,
        cache: Callable[[], ClusterCache],
        api: ClusterApi,
        events: EventRecorder,
        *,
        grace_period: float,
        eviction_timeout: float,
        not_ready_eviction_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._cache = cache
        self._api = api
        self._events = events
        self._grace = grace_period
        self._eviction = eviction_timeout
        self._not_ready_eviction = not_ready_eviction_timeout
        self._clock = clock
        self._now = now
        self._heartbeats: dict[str, _Heartbeat] = {}
        self._orphans_seen: dict[str, float] = {}  # Instance UID -> first seen without a node

    def heartbeat_age(self, node: str) -> float:
        """Seconds since this controller saw the node's Lease change; a node (or a controller)
        just started gets the whole grace period from the first look."""
        lease = self._cache().lease(node)
        version = lease.resource_version if lease else None
        now = self._clock()
        beat = self._heartbeats.get(node)
        if beat is None or beat.version != version:
            beat = self._heartbeats[node] = _Heartbeat(version, now)
        return now - beat.seen_at

    async def reconcile(self, name: str) -> float | None:
        node = self._cache().node(name)
        if node is None:
            self._heartbeats.pop(name, None)
            return None
        plan = plan_node_health(
            node,
            heartbeat_age=self.heartbeat_age(name),
            instances=self._cache().instances_on(name),
            now=self._now(),
            grace_period=self._grace,
            eviction_timeout=self._eviction,
            not_ready_eviction_timeout=self._not_ready_eviction,
        )
        if plan.mark_unknown is not None:
            await self._mark_unknown(node, plan.mark_unknown)
        for instance in plan.evict:
            await self._evict(instance, node, plan.not_ready_reason or "NotReady")
        retry = False
        for instance in plan.force_finalize:
            retry |= not await self._release_finalizers(instance, why=f"node {name} is not ready")
        if retry:  # the Instance changed under us: look again once the cache has caught up
            return 1.0
        return plan.requeue_after

    async def _mark_unknown(self, node: NodeAgent, message: str) -> None:
        name = node.metadata.name or ""
        conditions = set_condition(
            node.status.conditions if node.status else None,
            Condition(
                type=CONDITION_READY,
                status="Unknown",
                reason=NODE_STATUS_UNKNOWN_REASON,
                message=message,
            ),
            now=self._now(),
        )
        try:
            await self._api.merge_patch(
                custom_path(NODEAGENT_PLURAL, name=name, subresource="status"),
                {
                    # Conditional: an agent that just came back and wrote Ready wins.
                    "metadata": {"resourceVersion": node.metadata.resource_version},
                    "status": {"conditions": [c.to_dict() for c in conditions]},
                },
            )
        except (Conflict, NotFound):
            return
        logger.warning("node {}: Ready=Unknown ({})", name, message)
        self._events.record(
            ref_of(node),
            type="Warning",
            reason="NodeNotReady",
            action="NodeLifecycle",
            note=f"Node {name} status is now Unknown: {message}",
        )

    async def _evict(self, instance: Instance, node: NodeAgent, reason: str) -> None:
        key = key_of(instance)
        try:
            await self._api.delete(
                custom_path(INSTANCE_PLURAL, namespace=key.namespace, name=key.name),
                uid=instance.metadata.uid,
            )
        except (Conflict, NotFound):
            return
        note = (
            f"Node {node.metadata.name} has not been ready ({reason}) for {self._eviction:.0f}s:"
            " evicting the instance"
        )
        logger.info("evicted {}: {}", key, note)
        self._events.record(
            ref_of(instance), type="Warning", reason="Evicted", action="NodeLifecycle", note=note
        )

    async def _release_finalizers(self, instance: Instance, *, why: str) -> bool:
        """True once the agent's finalizers are off (or were never there)."""
        key = key_of(instance)
        finalizers = instance.metadata.finalizers or ()
        keep = [f for f in finalizers if not f.startswith(AGENT_FINALIZER_PREFIX)]
        if len(keep) == len(finalizers):
            return True
        try:
            await self._api.merge_patch(
                custom_path(INSTANCE_PLURAL, namespace=key.namespace, name=key.name),
                {
                    "metadata": {
                        "resourceVersion": instance.metadata.resource_version,
                        "finalizers": keep,
                    }
                },
            )
        except NotFound:
            return True
        except Conflict:
            return False
        logger.info("released the finalizers of evicted {}: {}", key, why)
        return True

    async def collect_orphans(self) -> int:
        """Delete Instances bound to nodes that do not exist, once they have been orphans for
        the grace period (a NodeAgent may be re-registering); returns how many."""
        cache = self._cache()
        nodes = {n.metadata.name for n in cache.nodes()}
        now = self._clock()
        seen: dict[str, float] = {}
        doomed = []
        for instance in cache.all_instances():
            node = instance.spec.node_name
            if not node or node in nodes:
                continue
            uid = str(instance.metadata.uid)
            seen[uid] = first = self._orphans_seen.get(uid, now)
            if now - first >= self._grace:
                doomed.append(instance)
        self._orphans_seen = seen
        for instance in doomed:
            key = key_of(instance)
            try:
                if instance.metadata.deletion_timestamp is None:
                    await self._api.delete(
                        custom_path(INSTANCE_PLURAL, namespace=key.namespace, name=key.name),
                        uid=instance.metadata.uid,
                    )
                await self._release_finalizers(
                    instance, why=f"its node {instance.spec.node_name} does not exist"
                )
            except (Conflict, NotFound):
                continue
            except ApiError as error:
                logger.warning("orphaned instance {} not collected: {}", key, error)
        return len(doomed)
