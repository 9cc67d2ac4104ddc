"""Wiring: the work queues, their workers, the periodic passes, and the routing of watch events
to the keys they concern. The kopf handlers call only ``attach``, ``start``, ``stop`` and the
``on_*`` routes; everything here runs in kopf's event loop.

Nothing is reconciled before the caches are complete: kopf calls event handlers only once every
index holds its initial list, so the first routed event opens the gate.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any, TypeVar

from loguru import logger

from kopflet.api import ProxyService, find_condition
from kopflet.api.constants import (
    INSTANCE_PLURAL,
    NODEAGENT_KIND,
    NODEAGENT_PLURAL,
    PROXYSERVICE_KIND,
    PROXYSERVICE_PLURAL,
    WORKLOAD_PLURAL,
)
from kopflet.controller.allocator import Allocator, Holder
from kopflet.controller.cluster_cache import ClusterCache, Index
from kopflet.controller.endpoints import selects
from kopflet.controller.events import EventRecorder
from kopflet.controller.instance_state import ObjectKey
from kopflet.controller.kube_api import ApiError, ClusterApi, NotFound, custom_path
from kopflet.controller.node_ipam import NodeIpam
from kopflet.controller.node_lifecycle import NodeLifecycle
from kopflet.controller.observability import ControllerMetrics, HealthState
from kopflet.controller.options import ControllerOptions
from kopflet.controller.scheduler import Scheduler
from kopflet.controller.service_sync import CONDITION_ALLOCATED, ServiceSync, values_in_use
from kopflet.controller.work_queue import WorkQueue
from kopflet.controller.workload_sync import WorkloadSync

K = TypeVar("K", bound=Hashable)

Body = Mapping[str, Any]

RESYNC_SECONDS = 300.0
WORKERS = 8
#: How often the caches are checked against fresh lists for deletions a re-list missed.
VERIFY_SECONDS = 600.0
REPAIR_SECONDS = 60.0
ORPHANS_SECONDS = 30.0
GAUGES_SECONDS = 15.0

INDEX_NAMES = ("instance_index", "workload_index", "service_index", "node_index", "lease_index")


def _key(body: Body) -> ObjectKey:
    meta = body.get("metadata") or {}
    return ObjectKey(str(meta.get("namespace") or ""), str(meta.get("name") or ""))


class ControllerRuntime:
    def __init__(
        self,
        options: ControllerOptions,
        *,
        api: ClusterApi,
        events: EventRecorder,
        metrics: ControllerMetrics,
        health: HealthState,
    ) -> None:
        self.options = options
        self.api = api
        self.events = events
        self.metrics = metrics
        self.health = health
        self._cache: ClusterCache | None = None
        self._synced = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.workload_queue: WorkQueue[ObjectKey] = self._queue("workload")
        self.service_queue: WorkQueue[ObjectKey] = self._queue("service")
        self.node_queue: WorkQueue[str] = self._queue("node-lifecycle")
        self.ipam_queue: WorkQueue[str] = self._queue("node-ipam")
        self.allocator = Allocator(api)
        self.workloads = WorkloadSync(self.cache, api, events)
        self.scheduler = Scheduler(self.cache, api, events, on_pass=self._scheduler_pass)
        self.lifecycle = NodeLifecycle(
            self.cache,
            api,
            events,
            grace_period=options.node_grace_period,
            eviction_timeout=options.eviction_timeout,
            not_ready_eviction_timeout=options.not_ready_eviction_timeout,
        )
        self.ipam = NodeIpam(self.cache, api, events, self.allocator, pool=options.subnet_pool)
        self.services = ServiceSync(
            self.cache,
            api,
            events,
            self.allocator,
            service_pool=options.service_pool,
            node_port_pool=options.node_port_pool,
        )

    def _queue(self, name: str) -> WorkQueue[Any]:
        latency = self.metrics.queue_latency.labels(controller=name)
        depth = self.metrics.queue_depth.labels(controller=name)
        return WorkQueue(name, on_latency=latency.observe, on_depth=depth.set)

    def cache(self) -> ClusterCache:
        if self._cache is None:
            raise RuntimeError("the caches are not attached yet")
        return self._cache

    def attach(self, indices: Mapping[str, Index]) -> None:
        """Take kopf's (live) indices, by the names the index handlers are registered under."""
        self._cache = ClusterCache(
            instances=indices["instance_index"],
            workloads=indices["workload_index"],
            services=indices["service_index"],
            nodes=indices["node_index"],
            leases=indices["lease_index"],
        )

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        spawn = self._spawn
        spawn("events", self.events.run())
        spawn("heartbeat", self._heartbeat())
        spawn("startup", self._after_sync())

    async def _after_sync(self) -> None:
        await self._synced.wait()
        # Allocations must be known before any is made; the list is the source of truth.
        await self._retrying("allocations load", self.allocator.load)
        self.health.synced = True
        logger.info(
            "caches synced: {} workloads, {} instances, {} services, {} nodes",
            len(self.cache().workloads()),
            len(self.cache().all_instances()),
            len(self.cache().services()),
            len(self.cache().nodes()),
        )
        spawn = self._spawn
        # Reconciles mostly wait on the API server: more workers overlap those waits.
        for n in range(WORKERS):
            spawn(f"workload-{n}", self._work(self.workload_queue, self.workloads.reconcile))
            spawn(f"service-{n}", self._work(self.service_queue, self.services.reconcile))
        for n in range(2):
            spawn(f"node-lifecycle-{n}", self._work(self.node_queue, self.lifecycle.reconcile))
        spawn("node-ipam", self._work(self.ipam_queue, self.ipam.reconcile))
        spawn("scheduler", self.scheduler.run())
        spawn("resync", self._every(RESYNC_SECONDS, self.resync_all))
        spawn("repair", self._every(REPAIR_SECONDS, self._repair, first=REPAIR_SECONDS / 2))
        spawn("orphans", self._every(ORPHANS_SECONDS, self.lifecycle.collect_orphans))
        spawn("gauges", self._every(GAUGES_SECONDS, self._gauges, first=0.0))
        spawn("verify", self._every(VERIFY_SECONDS, self._forget_deleted))
        await self.resync_all()

    async def stop(self) -> None:
        for queue in (self.workload_queue, self.service_queue, self.node_queue, self.ipam_queue):
            queue.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    def _spawn(self, name: str, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"kopflet-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _retrying(self, what: str, call: Callable[[], Awaitable[Any]]) -> None:
        delay = 0.5
        while True:
            try:
                await call()
                return
            except Exception as error:
                logger.warning("{} failed, retrying in {:.1f}s: {}", what, delay, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)

    async def _work(
        self, queue: WorkQueue[K], reconcile: Callable[[K], Awaitable[float | None]]
    ) -> None:
        name = queue.name
        duration = self.metrics.duration.labels(controller=name)
        while True:
            key = await queue.get()
            started = time.monotonic()
            try:
                after = await reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                delay = queue.retry(key)
                self.metrics.errors.labels(controller=name).inc()
                self.metrics.reconciles.labels(controller=name, result="error").inc()
                logger.opt(exception=not _expected(error)).warning(
                    "{} {}: {} (retry in {:.2f}s)", name, key, error, delay
                )
            else:
                queue.forget(key)
                self.metrics.reconciles.labels(controller=name, result="ok").inc()
                if after is not None:
                    queue.add_after(key, after)
            finally:
                queue.done(key)
                duration.observe(time.monotonic() - started)

    async def _every(
        self, seconds: float, call: Callable[[], Awaitable[Any]], *, first: float | None = None
    ) -> None:
        await asyncio.sleep(seconds if first is None else first)
        while True:
            try:
                await call()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("periodic {} failed", getattr(call, "__name__", call))
            await asyncio.sleep(seconds)

    async def _heartbeat(self) -> None:
        while True:
            self.health.beat()
            await asyncio.sleep(1.0)

    def _scheduler_pass(self, seconds: float, decided: int) -> None:
        self.metrics.duration.labels(controller="scheduler").observe(seconds)
        self.metrics.reconciles.labels(controller="scheduler", result="ok").inc()
        self.metrics.unschedulable.set(self.scheduler.parked)

    # --- periodic passes -------------------------------------------------------------------

    async def resync_all(self) -> None:
        """Queue every object again: a safety net under the event routing, not the mechanism."""
        cache = self.cache()
        for workload in cache.workloads():
            self.workload_queue.add(_key({"metadata": workload.metadata.to_dict()}))
        for service in cache.services():
            self.service_queue.add(_key({"metadata": service.metadata.to_dict()}))
        for node in cache.nodes():
            self.node_queue.add(node.metadata.name or "")
            self.ipam_queue.add(node.metadata.name or "")
        self.scheduler.wake()

    async def _repair(self) -> None:
        removed = await self.allocator.repair(self._still_used)
        if removed:
            logger.info("allocation repair released {} records", removed)

    async def _still_used(self, holder: Holder, kind: str, value: str) -> bool:
        """Is ``value`` still named by its holder? Asked of the API server, not the cache: the
        cache may not have seen the holder's spec write yet."""
        if holder.kind == PROXYSERVICE_KIND:
            path = custom_path(PROXYSERVICE_PLURAL, namespace=holder.namespace, name=holder.name)
        elif holder.kind == NODEAGENT_KIND:
            path = custom_path(NODEAGENT_PLURAL, name=holder.name)
        else:
            return True  # not ours to judge
        try:
            obj = await self.api.get(path)
        except NotFound:
            return False
        if str((obj.get("metadata") or {}).get("uid")) != holder.uid:
            return False
        spec = obj.get("spec") or {}
        if kind == "instancecidr":
            return bool(spec.get("instanceCIDR") == value)
        ip, ports = values_in_use(ProxyService.from_dict(obj))
        return value == ip if kind == "clusterip" else value in ports

    async def _forget_deleted(self) -> None:
        """kopf re-lists after a watch expires (410) but never reports the objects deleted in
        between; they would linger in the indices for good. Compare with fresh (paginated)
        lists now and then, and hide what is gone."""
        cache = self.cache()
        found = 0
        for plural in (INSTANCE_PLURAL, WORKLOAD_PLURAL, PROXYSERVICE_PLURAL, NODEAGENT_PLURAL):
            before = cache.uids(plural)
            listed = await self.api.list(custom_path(plural))
            live = {str((o.get("metadata") or {}).get("uid")) for o in listed}
            found += cache.forget_deleted(live, known_before=before)
        if found:
            logger.warning("{} deleted objects lingered in the caches: forgotten", found)
            await self.resync_all()

    async def _gauges(self) -> None:
        cache = self.cache()
        phases = Counter(
            (i.status.phase if i.status and i.status.phase else "Pending")
            if i.spec.node_name
            else "Unscheduled"
            for i in cache.all_instances()
        )
        self.metrics.objects.clear()
        for phase, count in phases.items():
            self.metrics.objects.labels(kind="Instance", phase=phase).set(count)
        self.metrics.objects.labels(kind="Workload", phase="All").set(len(cache.workloads()))
        self.metrics.objects.labels(kind="ProxyService", phase="All").set(len(cache.services()))
        self.metrics.objects.labels(kind="NodeAgent", phase="All").set(len(cache.nodes()))

    # --- event routing (called by the kopf handlers) ---------------------------------------

    def caches_synced(self) -> None:
        self._open_gate()

    def _open_gate(self) -> None:
        if not self._synced.is_set():
            self._synced.set()

    def on_workload(self, event_type: str | None, body: Body) -> None:
        self._open_gate()
        self.workload_queue.add(_key(body))

    def on_instance(self, event_type: str | None, body: Body) -> None:
        self._open_gate()
        meta = body.get("metadata") or {}
        for ref in meta.get("ownerReferences") or ():
            if ref.get("controller") and ref.get("kind") == "Workload":
                owner = ObjectKey(str(meta.get("namespace") or ""), str(ref.get("name")))
                self.workload_queue.add(owner)
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        cache = self._cache
        if cache is None:
            return
        self.scheduler.observe(str(meta.get("uid")), ObjectKey(namespace, name))
        self.scheduler.wake()
        labels = meta.get("labels") or {}
        for service in cache.services_in(namespace):
            listed = (
                any(e.instance == name for e in (service.status.endpoints or ()))
                if service.status
                else False
            )
            if listed or selects(service.spec.selector, labels):
                self.service_queue.add(ObjectKey(namespace, service.metadata.name or ""))

    def on_service(self, event_type: str | None, body: Body) -> None:
        self._open_gate()
        key = _key(body)
        if event_type == "DELETED":
            meta = body.get("metadata") or {}
            holder = Holder(
                kind=PROXYSERVICE_KIND,
                namespace=key.namespace,
                name=key.name,
                uid=str(meta.get("uid")),
            )
            self._spawn(
                f"release-{key}",
                self._retrying(
                    f"releasing the allocations of {key}",
                    lambda: self.allocator.release_all(holder),
                ),
            )
            # A service refused one of these values may get it now.
            for service in self.cache().services():
                conditions = service.status.conditions if service.status else None
                refused = find_condition(conditions, CONDITION_ALLOCATED)
                if refused is not None and refused.status == "False":
                    self.service_queue.add(
                        ObjectKey(service.metadata.namespace or "", service.metadata.name or "")
                    )
            return
        self.service_queue.add(key)

    def on_node(self, event_type: str | None, body: Body) -> None:
        self._open_gate()
        name = _key(body).name
        self.node_queue.add(name)
        self.ipam_queue.add(name)
        self.scheduler.nodes_changed()

    def on_lease(self, event_type: str | None, body: Body) -> None:
        self._open_gate()
        self.node_queue.add(_key(body).name)


def _expected(error: Exception) -> bool:
    """Failures worth one line, not a traceback: API refusals and connection trouble."""
    return isinstance(error, ApiError | OSError | TimeoutError)
