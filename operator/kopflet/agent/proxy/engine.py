"""ProxyEngine: the one object the agent's main loop drives for the kube-proxy role."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from loguru import logger

from kopflet.agent.proxy.cleanup import CleanupReport, cleanup_all, cleanup_other_modes
from kopflet.agent.proxy.clock import ProxyClock
from kopflet.agent.proxy.commands import CommandRunner
from kopflet.agent.proxy.conntrack import ConntrackFlush, flush_conntrack
from kopflet.agent.proxy.conversion import (
    node_route_from_object,
    service_key,
    service_ports_from_object,
)
from kopflet.agent.proxy.host_routes import HostRoutes
from kopflet.agent.proxy.iptables_proxier import IptablesProxier
from kopflet.agent.proxy.metrics import ProxyMetrics, default_metrics
from kopflet.agent.proxy.model import PROXY_MODES, NodeName, ProxyMode
from kopflet.agent.proxy.netfilter_backend import (
    IptablesBackend,
    NetfilterBackend,
    NftablesBackend,
    NftBackend,
    detect_iptables_variant,
)
from kopflet.agent.proxy.nftables_proxier import NftablesProxier
from kopflet.agent.proxy.proxier import Proxier
from kopflet.agent.proxy.sync_schedule import SyncPolicy
from kopflet.agent.proxy.syncer import ProxySyncer
from kopflet.agent.proxy.userspace_proxier import UserspaceProxier
from kopflet.api import ModelError

Obj = Mapping[str, Any]


def make_proxier(
    mode: ProxyMode,
    *,
    runner: CommandRunner,
    backend: NetfilterBackend | None = None,
    node_name: str | None = None,
) -> Proxier:
    if mode == "iptables":
        variant_backend = backend or IptablesBackend(
            variant=detect_iptables_variant(runner), runner=runner
        )
        return IptablesProxier(variant_backend)
    if mode == "nftables":
        forward = None
        if backend is None:
            variant = detect_iptables_variant(runner)
            if shutil.which(f"iptables-{variant}-restore") is not None:
                forward = IptablesBackend(variant=variant, runner=runner)
        if backend is not None and not hasattr(backend, "rule_count"):
            raise TypeError(f"{backend.name} can't back nftables mode: it counts no rules")
        return NftablesProxier(
            cast(NftBackend, backend) if backend is not None else NftablesBackend(runner),
            forward_backend=forward,
            node_name=node_name,
        )
    if mode == "userspace":
        return UserspaceProxier(runner)
    raise ValueError(f"unknown proxy mode {mode!r}; expected one of {', '.join(PROXY_MODES)}")


def _leftover_hooks(
    mode: ProxyMode, runner: CommandRunner, *, enabled: bool
) -> dict[str, Callable[[], object]]:
    """When to remove what a run in another mode left on the node.

    Between two netfilter modes, after the first sync: the old rules keep serving until
    the new ones are in place, and a connection DNATed by the old rules keeps its
    binding because the new mode's NAT chains keep the kernel applying it. Into the
    userspace mode, before it: there the old DNAT rules would take new connections from
    the relays, and a connection made through them goes silent when they go unless some
    other NAT chain (Docker's) keeps the kernel translating its replies. The price is a
    gap as long as that first sync, as if the agent started a moment later.
    """
    if not enabled:
        return {}

    def remove() -> None:
        report = cleanup_other_modes(mode, runner)
        if report.removed:
            logger.info("removed what another proxy mode left: {}", ", ".join(report.removed))
        for error in report.errors:
            logger.warning("removing another proxy mode's leftovers: {}", error)

    return {"before_first_sync" if mode == "userspace" else "after_first_sync": remove}


class ProxyEngine:
    """Feed it ProxyService and NodeAgent objects; it keeps the node's proxy in step.

    ``runner`` says which network namespace the commands run in (the current one by
    default); ``backend`` replaces the netfilter backend (tests); ``host_routes`` and
    ``conntrack`` switch those duties off where another component owns them;
    ``remove_other_modes`` (default: unless ``backend`` is given) removes what a run in
    another mode left on the node: after this mode's first sync, or before it when
    switching into the userspace mode (``_leftover_hooks`` says why).
    """

    def __init__(
        self,
        *,
        node_name: str,
        mode: ProxyMode = "iptables",
        backend: NetfilterBackend | None = None,
        runner: CommandRunner | None = None,
        clock: ProxyClock | None = None,
        policy: SyncPolicy | None = None,
        metrics: ProxyMetrics | None = None,
        host_routes: bool = True,
        conntrack: bool = True,
        remove_other_modes: bool | None = None,
    ) -> None:
        self.mode: ProxyMode = mode
        self._runner = runner or CommandRunner()
        runner_ = self._runner

        def flush(flushes: Sequence[ConntrackFlush]) -> Sequence[Exception]:
            return list(flush_conntrack(flushes, runner_))

        self.syncer = ProxySyncer(
            proxier=make_proxier(mode, runner=self._runner, backend=backend, node_name=node_name),
            node_name=NodeName(node_name),
            clock=clock,
            policy=policy,
            metrics=metrics or default_metrics(),
            routes=HostRoutes(self._runner) if host_routes else None,
            # Userspace relays keep no conntrack state of ours; they drop their own
            # sessions to removed endpoints.
            conntrack=flush if conntrack and mode != "userspace" else None,
            **_leftover_hooks(
                mode,
                runner_,
                enabled=backend is None if remove_other_modes is None else remove_other_modes,
            ),
        )

    def on_service(self, old: Obj | None, new: Obj | None) -> None:
        """A ProxyService was added (old=None), changed, or deleted (new=None)."""
        obj = new if new is not None else old
        if obj is None:
            return
        key = service_key(obj)
        if new is None:
            ports = {}
        else:
            try:
                ports = service_ports_from_object(new)
            except ModelError as exc:
                # Static stability: a malformed update keeps the rules of the last good one.
                logger.warning("ProxyService {}/{} ignored: {}", *key, exc)
                return
        self.syncer.services.update_service(key, ports)
        if self.syncer.services.has_pending:
            self.syncer.request_sync()

    def on_node(self, old: Obj | None, new: Obj | None) -> None:
        """A NodeAgent was added, changed or deleted."""
        obj = new if new is not None else old
        if obj is None:
            return
        name = NodeName(str((obj.get("metadata") or {}).get("name") or ""))
        route = None
        if new is not None:
            try:
                route = node_route_from_object(new)
            except ModelError as exc:
                logger.warning("NodeAgent {} ignored: {}", name, exc)
                return
        self.syncer.nodes.update(name, route)
        if self.syncer.nodes.has_pending:
            self.syncer.request_sync()

    def request_full_sync(self) -> None:
        """Sync fully as soon as the rate limit allows: another program changed the rules
        around ours (Docker creating the instance network puts its FORWARD rules first)."""
        self.syncer.request_full_sync()

    def mark_initial_lists_complete(self) -> None:
        """Every existing ProxyService and NodeAgent has been fed: programming may start."""
        self.syncer.mark_initial_lists_complete()

    async def run(self) -> None:
        """Sync until cancelled. Cancelling leaves the programmed rules in place."""
        await self.syncer.run()

    async def sync_now(self) -> bool:
        """One sync pass right away (the loop keeps its own schedule); refused (``False``)
        before the initial lists are complete."""
        if not self.syncer.schedule.initial_lists_complete:
            return False
        return await self.syncer.sync_once()

    @property
    def last_successful_sync(self) -> float | None:
        """Wall-clock time of the last successful sync, for health reporting."""
        return self.syncer.last_success_time

    def cleanup(self) -> CleanupReport:
        """Remove every chain, table, route and link of ours from the node (all modes)."""
        return cleanup_all(self._runner)
