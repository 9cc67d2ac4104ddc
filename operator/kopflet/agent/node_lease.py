"""The node's heartbeat: a ``coordination.k8s.io/v1`` Lease renewed every 10 seconds.

As the kubelet's node lease: named after the node in ``kopflet-node-lease``, holder the
node, 40 s duration, owned by the NodeAgent (so it goes with it). Liveness lives here and
not in the NodeAgent status, so a heartbeat costs one small write and no status churn.
Renewals replace the Lease with the version last seen (optimistic concurrency); a conflict
or a missing Lease is resolved by reading or creating it again. A failed renewal is retried
sooner than the period, as the Lease must not lapse over one lost request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from loguru import logger

from kopflet.agent import metrics
from kopflet.agent.event_recorder import micro_time
from kopflet.agent.kube_client import (
    COORDINATION_API,
    ApiError,
    ApiUnavailable,
    Conflict,
    NotFound,
    object_path,
)
from kopflet.api.constants import API_VERSION, NODE_LEASE_NAMESPACE, NODEAGENT_KIND

RENEW_INTERVAL_SECONDS: Final = 10.0
LEASE_DURATION_SECONDS: Final = 40
#: After a failed renewal: the kubelet retries at most this far apart.
RETRY_SECONDS: Final = 2.0


class LeaseApi(Protocol):
    async def get(
        self, path: str, *, params: Mapping[str, str] | None = None
    ) -> dict[str, Any]: ...

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]: ...

    async def replace(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]: ...


def lease_body(
    node_name: str,
    *,
    now: float,
    owner_uid: str | None,
    base: Mapping[str, Any] | None = None,
    duration_seconds: int = LEASE_DURATION_SECONDS,
) -> dict[str, Any]:
    """The Lease renewed at ``now``: ``base`` (the version last read) with our holder,
    duration and renew time; a fresh one without a base. Pure."""
    body: dict[str, Any] = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": dict((base or {}).get("metadata") or {}),
        "spec": dict((base or {}).get("spec") or {}),
    }
    meta = body["metadata"]
    meta["name"] = node_name
    meta["namespace"] = NODE_LEASE_NAMESPACE
    if owner_uid and not meta.get("ownerReferences"):
        meta["ownerReferences"] = [
            {"apiVersion": API_VERSION, "kind": NODEAGENT_KIND, "name": node_name, "uid": owner_uid}
        ]
    body["spec"].update(
        holderIdentity=node_name,
        leaseDurationSeconds=duration_seconds,
        renewTime=micro_time(now),
    )
    return body


class NodeLease:
    def __init__(
        self,
        api: LeaseApi,
        *,
        node_name: str,
        owner_uid: Callable[[], str | None] = lambda: None,
        interval: float = RENEW_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node_name = node_name
        self._api = api
        self._owner_uid = owner_uid
        self._interval = interval
        self._clock = clock
        self._path = object_path(
            COORDINATION_API, "leases", namespace=NODE_LEASE_NAMESPACE, name=node_name
        )
        self._lease: dict[str, Any] | None = None
        #: Wall time of the last successful renewal.
        self.last_renewal: float | None = None

    async def run(self) -> None:
        while True:
            try:
                await self.renew()
                metrics.LEASE_RENEWALS.labels("success").inc()
                delay = self._interval
            except (ApiUnavailable, ApiError) as exc:
                metrics.LEASE_RENEWALS.labels("failure").inc()
                logger.warning("lease of {} not renewed: {}", self.node_name, exc)
                delay = RETRY_SECONDS
            await asyncio.sleep(delay)

    async def renew(self) -> None:
        if self._lease is None:
            await self._read_or_create()
            return
        body = lease_body(
            self.node_name, now=self._clock(), owner_uid=self._owner_uid(), base=self._lease
        )
        try:
            self._lease = await self._api.replace(self._path, body)
        except (Conflict, NotFound):
            # Someone else wrote it, or it was deleted: start from what is there now.
            self._lease = None
            await self._read_or_create()
            return
        self.last_renewal = self._clock()

    async def _read_or_create(self) -> None:
        try:
            base: dict[str, Any] | None = await self._api.get(self._path)
        except NotFound:
            base = None
        body = lease_body(self.node_name, now=self._clock(), owner_uid=self._owner_uid(), base=base)
        if base is None:
            self._lease = await self._api.create(
                object_path(COORDINATION_API, "leases", namespace=NODE_LEASE_NAMESPACE), body
            )
        else:
            self._lease = await self._api.replace(self._path, body)
        self.last_renewal = self._clock()
