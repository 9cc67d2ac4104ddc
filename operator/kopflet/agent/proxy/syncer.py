"""The proxy sync loop: trackers in, one proxier sync per pass, routes and conntrack after.

Watch callbacks only record changes in the trackers and wake the loop; the loop
decides (:class:`SyncSchedule`) when to sync and whether fully, drains the trackers
and hands the whole state to the proxier. Nothing is programmed (rules, routes)
before :meth:`ProxySyncer.mark_initial_lists_complete`: a half-listed cluster would
otherwise delete the rules of every service not listed yet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from loguru import logger

from kopflet.agent.proxy.change_tracker import NodeChangeTracker, ServiceChangeTracker
from kopflet.agent.proxy.clock import ProxyClock, SystemClock
from kopflet.agent.proxy.conntrack import ConntrackFlush, plan_conntrack_flushes
from kopflet.agent.proxy.metrics import ProxyMetrics
from kopflet.agent.proxy.model import NodeName, NodeRoute
from kopflet.agent.proxy.proxier import Proxier, ProxyState
from kopflet.agent.proxy.sync_schedule import SyncPolicy, SyncSchedule


class RouteSyncer(Protocol):
    def sync(self, nodes: Iterable[NodeRoute], *, own_node: NodeName) -> Sequence[Exception]: ...


ConntrackFlusher = Callable[[Sequence[ConntrackFlush]], Sequence[Exception]]


class ProxySyncer:
    def __init__(
        self,
        *,
        proxier: Proxier,
        node_name: NodeName,
        clock: ProxyClock | None = None,
        policy: SyncPolicy | None = None,
        metrics: ProxyMetrics | None = None,
        routes: RouteSyncer | None = None,
        conntrack: ConntrackFlusher | None = None,
        before_first_sync: Callable[[], object] | None = None,
        after_first_sync: Callable[[], object] | None = None,
    ) -> None:
        self.proxier = proxier
        self.node_name = node_name
        self.services = ServiceChangeTracker()
        self.nodes = NodeChangeTracker()
        self.schedule = SyncSchedule(policy)
        self._clock = clock or SystemClock()
        self._metrics = metrics
        self._routes = routes
        self._conntrack = conntrack
        self._before_first_sync = before_first_sync
        self._after_first_sync = after_first_sync
        self._wake = asyncio.Event()
        self._routes_dirty = True
        self._pending_flushes: set[ConntrackFlush] = set()
        self.last_success_time: float | None = None

    # --- fed by the watch callbacks --------------------------------------------------

    def request_sync(self) -> None:
        self.schedule.request()
        self._wake.set()

    def request_full_sync(self) -> None:
        """Something outside changed the node's netfilter state (Docker made a network)."""
        self.schedule.request_full()
        self._wake.set()

    def mark_initial_lists_complete(self) -> None:
        self.schedule.initial_lists_complete = True
        self._wake.set()

    # --- the loop --------------------------------------------------------------------

    async def run(self, *, max_passes: int | None = None) -> None:
        """Sync until cancelled (or ``max_passes`` loop passes, for tests)."""
        passes = 0
        try:
            while max_passes is None or passes < max_passes:
                passes += 1
                self._wake.clear()
                now = self._clock.monotonic()
                sync_at = self.schedule.next_sync_at()
                canary_at = self.schedule.next_canary_at()
                if sync_at is not None and sync_at <= now:
                    await self.sync_once()
                    continue
                if canary_at is not None and canary_at <= now:
                    await self.check_canary()
                    continue
                deadlines = [t for t in (sync_at, canary_at) if t is not None]
                timeout = max(0.0, min(deadlines) - now) if deadlines else None
                await self._clock.wait(self._wake, timeout)
        finally:
            await self.proxier.close()

    async def check_canary(self) -> bool:
        try:
            intact = await self.proxier.canary_intact()
        except Exception as exc:  # a failing check is no proof of a flush; retry later
            logger.warning("proxy canary check failed: {}", exc)
            intact = True
        self.schedule.record_canary(self._clock.monotonic(), intact=intact)
        if not intact:
            logger.warning(
                "proxy rules were flushed or put behind others externally; resyncing fully"
            )
            if self._metrics:
                self._metrics.canary_repairs.inc()
        return intact

    async def sync_once(self) -> bool:
        """One sync pass now, whatever the schedule says; ``True`` if it succeeded."""
        now = self._clock.monotonic()
        full = self.schedule.full_due(now)
        service_changes = self.services.drain()
        self.schedule.start_sync(full=full)
        if self.nodes.drain() or full:
            self._routes_dirty = True
        self._pending_flushes.update(plan_conntrack_flushes(service_changes))
        if self._before_first_sync is not None:
            hook, self._before_first_sync = self._before_first_sync, None
            await self._run_hook("before the first proxy sync", hook)
        state = ProxyState(
            service_ports=dict(self.services.applied),
            instance_cidrs=tuple(sorted({n.instance_cidr for n in self.nodes.applied.values()})),
        )
        try:
            outcome = await self.proxier.sync(state, changed=set(service_changes), full=full)
        except Exception as exc:
            logger.error("proxy sync ({}) failed: {}", "full" if full else "partial", exc)
            self.schedule.record_sync(now, full=full, ok=False)
            self._observe(full=full, started=now, ok=False)
            return False
        self.schedule.record_sync(now, full=outcome.full, ok=True)
        self._observe(full=outcome.full, started=now, ok=True)
        self.last_success_time = self._clock.time()
        if self._metrics:
            self._metrics.rules_programmed.set(outcome.rules_programmed)
            self._metrics.last_sync_success.set(self.last_success_time)
        await self._sync_routes()
        await self._flush_conntrack()
        if self._after_first_sync is not None:
            hook, self._after_first_sync = self._after_first_sync, None
            await self._run_hook("after the first proxy sync", hook)
        return True

    @staticmethod
    async def _run_hook(when: str, hook: Callable[[], object]) -> None:
        try:
            await asyncio.to_thread(hook)
        except Exception as exc:  # a failed cleanup of leftovers must not stop the proxy
            logger.warning("{}: {}", when, exc)

    def _observe(self, *, full: bool, started: float, ok: bool) -> None:
        if self._metrics:
            seconds = max(0.0, self._clock.monotonic() - started)
            self._metrics.observe_sync(full=full, seconds=seconds, ok=ok)

    async def _sync_routes(self) -> None:
        if self._routes is None or not self._routes_dirty:
            return
        nodes = list(self.nodes.applied.values())
        errors = await asyncio.to_thread(self._routes.sync, nodes, own_node=self.node_name)
        for error in errors:
            logger.error("host subnet route: {}", error)
        # Failed routes are retried on the next pass that has reason to look (a node
        # change or the periodic full sync), not in a tight loop.
        self._routes_dirty = False

    async def _flush_conntrack(self) -> None:
        # After the rules: flushing first would let a datagram in flight recreate
        # the stale entry through the old rules.
        if self._conntrack is None or not self._pending_flushes:
            self._pending_flushes.clear()
            return
        flushes = sorted(self._pending_flushes, key=lambda f: f.argv())
        self._pending_flushes.clear()
        for error in await asyncio.to_thread(self._conntrack, flushes):
            logger.warning("conntrack flush: {}", error)
