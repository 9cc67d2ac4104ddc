"""The scheduler loop: bind every unbound Instance to a node.

Decisions are made one at a time from one snapshot of the nodes' usage per pass; each binding
is *assumed* (its requests added to the node's usage) before its API write is sent, and stays
assumed until the watch shows the Instance bound. Binds then run concurrently without ever
overcommitting a node, because no two decisions see the same free capacity — the kube-
scheduler's assume cache. The bind itself is conditional on the Instance's resourceVersion, so
an Instance is bound once even if two binders race for it.

An Instance no node can take is parked, as kube-scheduler parks it in its unschedulable
pool: later passes skip it until something that could make room happens -- a node changes,
capacity bound to a node is released, an assumed bind is given up -- or the Instance's own
spec changes, and every ``RETRY_SECONDS`` regardless. Without that, each of a burst's watch
events would re-evaluate every pending Instance, a cost growing with how many wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from loguru import logger

from kopflet.api import Condition, Instance, find_condition, set_condition
from kopflet.api.constants import (
    AGENT_FINALIZER,
    CONDITION_SCHEDULED,
    INSTANCE_PLURAL,
    NODE_NAME_LABEL,
)
from kopflet.controller.cluster_cache import ClusterCache
from kopflet.controller.events import EventRecorder, ref_of
from kopflet.controller.instance_state import (
    NodeName,
    ObjectKey,
    Requests,
    controller_uid,
    creation_order_key,
    key_of,
    requests_of,
)
from kopflet.controller.kube_api import ApiError, ClusterApi, Conflict, NotFound, custom_path
from kopflet.controller.node_usage import NodeUsage
from kopflet.controller.scheduling import NodeSnapshot, choose_node, snapshot_of

REASON_UNSCHEDULABLE = "Unschedulable"
#: Unschedulable Instances are retried when a node changes or capacity is freed, and at
#: least this often.
RETRY_SECONDS = 10.0
#: A bind not seen through the watch after this long is forgotten (its capacity freed).
ASSUME_TTL_SECONDS = 30.0
_BIND_CONCURRENCY = 32
#: The per-node usage is kept up to date from events and rebuilt from the cache this often.
USAGE_REBUILD_SECONDS = 60.0


def bind_patch(instance: Instance, node: NodeName) -> dict[str, Any]:
    """The merge patch binding ``instance`` to ``node``: ``spec.nodeName``, the node label
    the agent's watch selects on, and the agent's finalizer, which the agent would
    otherwise add in a write of its own. Conditional on the resourceVersion read, so the
    finalizer list it replaces is the one it was computed from. Pure."""
    metadata: dict[str, Any] = {
        "resourceVersion": instance.metadata.resource_version,
        "labels": {NODE_NAME_LABEL: node},
    }
    finalizers = list(instance.metadata.finalizers or ())
    if AGENT_FINALIZER not in finalizers:
        metadata["finalizers"] = [*finalizers, AGENT_FINALIZER]
    return {"metadata": metadata, "spec": {"nodeName": node}}


@dataclass(frozen=True)
class _Assumed:
    uid: str
    node: NodeName
    requests: Requests
    owner: str | None
    expires: float


class Scheduler:
    def __init__(
        self,
        cache: Callable[[], ClusterCache],
        api: ClusterApi,
        events: EventRecorder,
        *,
        on_pass: Callable[[float, int], None] | None = None,
    ) -> None:
        self._cache = cache
        self._api = api
        self._events = events
        self._on_pass = on_pass
        self._wakeup = asyncio.Event()
        self._assumed: dict[ObjectKey, _Assumed] = {}
        self._requests: dict[str, Requests] = {}  # by Instance UID: specs are immutable
        self._usage = NodeUsage(self._requests_of)
        self._usage_built_at = -USAGE_REBUILD_SECONDS
        self._binds: set[asyncio.Task[None]] = set()
        self._gate = asyncio.Semaphore(_BIND_CONCURRENCY)
        # Bumped whenever a node may have changed or room may have been freed on one; an
        # Instance found unschedulable is parked under the epoch it was tried in.
        self._epoch = 0
        self._flushed_at = time.monotonic()
        self._parked: dict[str, tuple[int, int]] = {}  # UID -> (its generation, epoch)

    def wake(self) -> None:
        self._wakeup.set()

    def nodes_changed(self) -> None:
        """A node was added, changed or removed: parked Instances are tried again."""
        self._epoch += 1
        self.wake()

    @property
    def parked(self) -> int:
        """Unschedulable Instances waiting for a node change or freed capacity."""
        return len(self._parked)

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=RETRY_SECONDS)
            self._wakeup.clear()
            started = time.monotonic()
            try:
                decided = await self.schedule_pending()
            except Exception:
                logger.exception("scheduling pass failed")
                decided = 0
            if self._on_pass:
                self._on_pass(time.monotonic() - started, decided)
            # Let a burst of watch events land before the next pass re-reads everything.
            await asyncio.sleep(0.02)

    def _requests_of(self, instance: Instance) -> Requests:
        uid = str(instance.metadata.uid)
        found = self._requests.get(uid)
        if found is None:
            found = self._requests[uid] = requests_of(instance)
        return found

    def observe(self, uid: str, key: ObjectKey) -> None:
        """An Instance event was indexed: account for the Instance as the cache has it now."""
        instance = self._cache().instance(key)
        if instance is not None and str(instance.metadata.uid) != uid:
            instance = None  # a new object of the same name: the old one is gone
        if self._usage.observe(uid, instance):
            self._epoch += 1  # room freed on a node
        if instance is None:
            self._requests.pop(uid, None)
            self._parked.pop(uid, None)

    def _snapshot(self, cache: ClusterCache) -> dict[NodeName, NodeSnapshot]:
        now = time.monotonic()
        if now - self._usage_built_at > USAGE_REBUILD_SECONDS:
            self._usage.rebuild(cache.all_instances())
            self._usage_built_at = now
            live = {str(i.metadata.uid) for i in cache.all_instances()}
            self._requests = {u: r for u, r in self._requests.items() if u in live}
            self._parked = {u: p for u, p in self._parked.items() if u in live}
        nodes: dict[NodeName, NodeSnapshot] = {}
        for node in cache.nodes():
            name = NodeName(node.metadata.name or "")
            nodes[name] = snapshot_of(
                node, used=self._usage.used(name), per_owner=self._usage.owners(name)
            )
        for key, assumed in list(self._assumed.items()):
            current = cache.instance(key)
            if assumed.expires < now or current is None or str(current.metadata.uid) != assumed.uid:
                del self._assumed[key]
                self._epoch += 1  # its reservation is given back
                continue
            if current.spec.node_name and assumed.uid in self._usage:
                del self._assumed[key]  # bound, and the usage counts it now
                continue
            self._reserve(nodes, assumed)
        return nodes

    @staticmethod
    def _reserve(nodes: dict[NodeName, NodeSnapshot], assumed: _Assumed) -> None:
        node = nodes.get(assumed.node)
        if node is None:
            return
        owners = Counter(node.per_owner)
        if assumed.owner:
            owners[assumed.owner] += 1
        nodes[assumed.node] = NodeSnapshot(
            name=node.name,
            labels=node.labels,
            ready=node.ready,
            unschedulable=node.unschedulable,
            allocatable=node.allocatable,
            used=node.used + assumed.requests,
            per_owner=owners,
        )

    async def schedule_pending(self) -> int:
        """One pass over every unbound Instance not parked; returns how many were tried."""
        cache = self._cache()
        if not cache.has_unbound_instances():
            self._assumed.clear()
            self._parked.clear()
            return 0
        now = time.monotonic()
        if now - self._flushed_at >= RETRY_SECONDS:
            self._epoch += 1
            self._flushed_at = now
        nodes = self._snapshot(cache)
        # Parked under this epoch: nothing has happened since that could fit them. Taken
        # before any await, so room freed during the pass is seen by the next one.
        epoch = self._epoch
        pending = sorted(
            (
                i
                for i in cache.unbound_instances()
                if key_of(i) not in self._assumed
                and self._parked.get(str(i.metadata.uid)) != (i.metadata.generation or 0, epoch)
            ),
            key=creation_order_key,
        )
        for instance in pending:
            uid = str(instance.metadata.uid)
            wanted = self._requests_of(instance)
            owner = controller_uid(instance)
            decision = choose_node(
                wanted=wanted,
                node_selector=instance.spec.node_selector,
                owner_uid=owner,
                nodes=list(nodes.values()),
                seed=uid,
            )
            if decision.node is None:
                self._parked[uid] = (instance.metadata.generation or 0, epoch)
                await self._unschedulable(instance, decision.message)
                continue
            self._parked.pop(uid, None)
            assumed = _Assumed(
                uid=uid,
                node=decision.node,
                requests=wanted,
                owner=owner,
                expires=time.monotonic() + ASSUME_TTL_SECONDS,
            )
            self._assumed[key_of(instance)] = assumed
            self._reserve(nodes, assumed)
            task = asyncio.create_task(self._bind(instance, decision.node))
            self._binds.add(task)
            task.add_done_callback(self._binds.discard)
        return len(pending)

    async def _bind(self, instance: Instance, node: NodeName) -> None:
        key = key_of(instance)
        path = custom_path(INSTANCE_PLURAL, namespace=key.namespace, name=key.name)
        async with self._gate:
            try:
                bound = await self._api.merge_patch(path, bind_patch(instance, node))
            except (Conflict, NotFound):
                # Changed or deleted since we read it: forget the decision, look again.
                self._forget(key)
                return
            except (ApiError, OSError, TimeoutError) as error:
                logger.warning("binding {} to {} failed: {}", key, node, error)
                self._forget(key)
                return
            self._events.record(
                ref_of(instance),
                type="Normal",
                reason="Scheduled",
                action="Binding",
                note=f"Successfully assigned {key} to {node}",
            )
            conditions = instance.status.conditions if instance.status else None
            if find_condition(conditions, CONDITION_SCHEDULED) is None:
                return  # nothing stale to correct: the agent reports the condition from here on
            await self._set_scheduled(
                instance,
                resource_version=str((bound.get("metadata") or {}).get("resourceVersion", "")),
                condition=Condition(
                    type=CONDITION_SCHEDULED,
                    status="True",
                    reason="Scheduled",
                    message=f"Bound to {node}",
                ),
            )

    def _forget(self, key: ObjectKey) -> None:
        """Give up an assumed bind: its room is free again for whatever is parked."""
        self._assumed.pop(key, None)
        self._epoch += 1
        self.wake()

    async def _unschedulable(self, instance: Instance, message: str) -> None:
        conditions = instance.status.conditions if instance.status else None
        current = find_condition(conditions, CONDITION_SCHEDULED)
        if (
            current is not None
            and current.status == "False"
            and current.reason == REASON_UNSCHEDULABLE
            and current.message == message
        ):
            return
        self._events.record(
            ref_of(instance),
            type="Warning",
            reason="FailedScheduling",
            action="Scheduling",
            note=message,
        )
        await self._set_scheduled(
            instance,
            resource_version=instance.metadata.resource_version or "",
            condition=Condition(
                type=CONDITION_SCHEDULED,
                status="False",
                reason=REASON_UNSCHEDULABLE,
                message=message,
            ),
        )

    async def _set_scheduled(
        self, instance: Instance, *, resource_version: str, condition: Condition
    ) -> None:
        """Write only the scheduling condition, conditional on the version read: if the agent
        has written the status meanwhile, its own report stands (it reports this one too)."""
        key = key_of(instance)
        conditions = set_condition(
            instance.status.conditions if instance.status else None,
            condition,
            now=datetime.now(UTC),
        )
        try:
            await self._api.merge_patch(
                custom_path(
                    INSTANCE_PLURAL, namespace=key.namespace, name=key.name, subresource="status"
                ),
                {
                    "metadata": {"resourceVersion": resource_version},
                    "status": {"conditions": [c.to_dict() for c in conditions]},
                },
            )
        except (Conflict, NotFound):
            pass
        except (ApiError, OSError, TimeoutError) as error:
            logger.warning("instance {}: condition {} not written: {}", key, condition.type, error)
