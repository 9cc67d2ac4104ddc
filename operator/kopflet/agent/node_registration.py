"""This node's NodeAgent: created by its agent, its status kept current, its subnet read back.

The agent creates the NodeAgent (named after the node, labelled with it) and writes its
status: addresses, capacity from the engine, node info and the Ready condition. The status
is recomputed every ``period`` seconds and when woken, and written only when it changed
(a merge patch of the changed fields). ``spec.instanceCIDR`` is the controller's (node
IPAM); the runtime cannot start without it, so :meth:`wait_for_instance_cidr` waits.

A NodeAgent deleted under a running agent is created again, as the kubelet re-registers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from loguru import logger

from kopflet.agent import metrics
from kopflet.agent.event_recorder import EventType
from kopflet.agent.informer import Backoff, Obj
from kopflet.agent.kube_client import (
    KOPFLET_API,
    ApiError,
    ApiUnavailable,
    Conflict,
    NotFound,
    object_path,
)
from kopflet.agent.node_status import NodeFacts, is_ready, node_status
from kopflet.agent.status_patch import status_merge_patch
from kopflet.api import ModelError, NodeAgent, NodeAgentStatus
from kopflet.api.constants import API_VERSION, NODEAGENT_KIND, NODEAGENT_PLURAL

#: Like ``kubernetes.io/hostname`` on a Node: selects the NodeAgent of a node.
HOSTNAME_LABEL: Final = "kopflet.dev/hostname"
#: A node that is not Ready looks again this soon, not a whole period later: the controller
#: evicts a node's Instances once it has been not Ready for its eviction timeout (30 s), and an
#: engine that is back should not lose them to the status period.
NOT_READY_RECHECK_SECONDS: Final = 2.0


class NodeApi(Protocol):
    async def get(
        self, path: str, *, params: Mapping[str, str] | None = None
    ) -> dict[str, Any]: ...

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]: ...

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]: ...


#: Records an Event about this node's NodeAgent: (uid, type, reason, message).
NodeEvents = Callable[[str, EventType, str, str], None]


def _older(node: NodeAgent, *, than: NodeAgent) -> bool:
    mine, theirs = node.metadata.resource_version, than.metadata.resource_version
    if mine and theirs and mine.isdigit() and theirs.isdigit():
        return int(mine) < int(theirs)
    return False


def node_agent_body(node_name: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": NODEAGENT_KIND,
        "metadata": {"name": node_name, "labels": {HOSTNAME_LABEL: node_name}},
        "spec": {},
    }


class NodeRegistration:
    def __init__(
        self,
        api: NodeApi,
        *,
        node_name: str,
        facts: Callable[[], Awaitable[NodeFacts]],
        period: float = 10.0,
        now: Callable[[], datetime] = lambda: datetime.now(tz=UTC),
        events: NodeEvents | None = None,
    ) -> None:
        self.node_name = node_name
        self._api = api
        self._facts = facts
        self._events = events
        self._started_reported = False
        self._period = period
        self._now = now
        self._path = object_path(KOPFLET_API, NODEAGENT_PLURAL, name=node_name)
        self._registered = False
        self._wake = asyncio.Event()
        self._cidr_known = asyncio.Event()
        #: The newest NodeAgent seen (watch, create, patch responses).
        self.node: NodeAgent | None = None
        self._written: dict[str, Any] | None = None
        self.last_write: float | None = None
        self.writes = 0

    # -- what others read ------------------------------------------------------------------

    @property
    def instance_cidr(self) -> str | None:
        return self.node.spec.instance_cidr if self.node and self.node.spec else None

    @property
    def uid(self) -> str | None:
        return self.node.metadata.uid if self.node else None

    async def wait_for_instance_cidr(self, *, log_every: float = 30.0) -> str:
        while self.instance_cidr is None:
            logger.info(
                "waiting for spec.instanceCIDR of NodeAgent {} (set by the controller's node "
                "IPAM) before starting the runtime",
                self.node_name,
            )
            try:
                await asyncio.wait_for(self._cidr_known.wait(), timeout=log_every)
            except TimeoutError:
                continue
        return self.instance_cidr

    def wake(self) -> None:
        self._wake.set()

    # -- fed by the NodeAgent watch ----------------------------------------------------------

    def observe(self, obj: Obj | None) -> None:
        """Our own NodeAgent as the watch shows it; ``None`` when it was deleted."""
        if obj is None:
            if self._registered:
                logger.warning("NodeAgent {} was deleted; registering again", self.node_name)
            self._registered = False
            self._written = None
            self.wake()
            return
        self._adopt(obj)

    def _adopt(self, obj: Mapping[str, Any]) -> None:
        try:
            node = NodeAgent.from_dict(obj)
        except ModelError as exc:
            logger.error("NodeAgent {} not understood: {}", self.node_name, exc)
            return
        if self.node is not None and self.node.metadata.uid != node.metadata.uid:
            self._written = None  # another object now: its status is not what we wrote
        elif self.node is not None and _older(node, than=self.node):
            # The response to our own write may overtake the watch's older events.
            return
        self.node = node
        if self.instance_cidr is not None:
            self._cidr_known.set()

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        backoff = Backoff(initial=1.0, maximum=30.0)
        while True:
            self._wake.clear()
            try:
                if not self._registered:
                    await self.register()
                await self.sync_status()
                backoff.reset()
                timeout = self._period
                status = self.node.status if self.node else None
                if status is not None and not is_ready(status):
                    timeout = min(timeout, NOT_READY_RECHECK_SECONDS)
            except (ApiUnavailable, ApiError) as exc:
                timeout = backoff.next()
                logger.warning(
                    "NodeAgent {}: {} (retrying in {:.0f}s)", self.node_name, exc, timeout
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    async def register(self) -> None:
        """Create the NodeAgent, or take over the one that exists (an agent restart)."""
        try:
            obj = await self._api.create(
                object_path(KOPFLET_API, NODEAGENT_PLURAL), node_agent_body(self.node_name)
            )
            logger.info("registered NodeAgent {}", self.node_name)
        except Conflict:  # AlreadyExists
            obj = await self._api.get(self._path)
            labels = (obj.get("metadata") or {}).get("labels") or {}
            if labels.get(HOSTNAME_LABEL) != self.node_name:
                obj = await self._api.merge_patch(
                    self._path, {"metadata": {"labels": {HOSTNAME_LABEL: self.node_name}}}
                )
        self._adopt(obj)
        self._registered = True
        if not self._started_reported and self._events is not None and self.uid:
            self._events(self.uid, "Normal", "Starting", "Starting kopflet agent.")
            self._started_reported = True

    async def sync_status(self) -> bool:
        """Write the status if it changed; True if something was written."""
        facts = await self._facts()
        observed = self.node.status if self.node else None
        status: NodeAgentStatus = node_status(facts, previous=observed, now=self._now())
        metrics.NODE_READY.set(1 if is_ready(status) else 0)
        new = status.to_dict()
        observed_dict = observed.to_dict() if observed else None
        patch = status_merge_patch(new, [self._written or observed_dict, observed_dict])
        if not patch:
            self._written = new
            return False
        try:
            obj = await self._api.merge_patch(
                object_path(
                    KOPFLET_API, NODEAGENT_PLURAL, name=self.node_name, subresource="status"
                ),
                {"status": patch},
            )
        except NotFound:
            self._registered = False
            raise
        self._written = new
        self.writes += 1
        metrics.NODE_STATUS_WRITES.inc()
        self.last_write = time.time()
        was_ready = is_ready(observed) if observed and observed.conditions else None
        self._adopt(obj)
        if self._events is not None and self.uid and was_ready is not is_ready(status):
            ready = is_ready(status)
            reason = "NodeReady" if ready else "NodeNotReady"
            message = f"Node {self.node_name} status is now: {reason}"
            self._events(self.uid, "Normal", reason, message)
        return True
