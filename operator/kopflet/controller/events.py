"""Events through the ``events.k8s.io/v1`` API, with the controller as reportingController, so
``kubectl describe workload web`` tells the rollout's story.

Recording never blocks a reconcile and never fails it: events are queued and posted in the
background, best effort. The same event (object, reason, note) is posted once per ten minutes,
so a retried step does not flood the object's history.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from loguru import logger

from kopflet.controller.kube_api import ApiError, ClusterApi, events_path

REPORTING_CONTROLLER = "kopflet.dev/controller"
EventType = Literal["Normal", "Warning"]

_REPEAT_SECONDS = 600.0
_MAX_REMEMBERED = 10_000


@dataclass(frozen=True)
class ObjectRef:
    api_version: str
    kind: str
    name: str
    namespace: str | None
    uid: str | None


def ref_of(obj: Any) -> ObjectRef:
    """The reference of any API model (``Workload``, ``Instance``, ...)."""
    meta = obj.metadata
    return ObjectRef(
        api_version=obj.api_version,
        kind=obj.kind,
        name=meta.name or "",
        namespace=meta.namespace,
        uid=meta.uid,
    )


@dataclass(frozen=True)
class _Pending:
    ref: ObjectRef
    type: EventType
    reason: str
    action: str
    note: str
    moment: datetime


def _micro_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class EventRecorder:
    def __init__(self, api: ClusterApi, *, instance: str, queue_size: int = 5000) -> None:
        self._api = api
        self._instance = instance
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=queue_size)
        self._recent: dict[tuple[str, str, str], float] = {}

    def record(
        self, ref: ObjectRef, *, type: EventType, reason: str, action: str, note: str
    ) -> None:
        key = (ref.uid or f"{ref.namespace}/{ref.name}", reason, note)
        now = time.monotonic()
        if now - self._recent.get(key, -_REPEAT_SECONDS) < _REPEAT_SECONDS:
            return
        if len(self._recent) > _MAX_REMEMBERED:
            self._recent = {k: t for k, t in self._recent.items() if now - t < _REPEAT_SECONDS}
        self._recent[key] = now
        pending = _Pending(
            ref=ref,
            type=type,
            reason=reason,
            action=action,
            note=note[:1024],
            moment=datetime.now(UTC),
        )
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            logger.warning("event dropped (queue full): {} {} {}", ref.kind, ref.name, reason)

    async def run(self) -> None:
        while True:
            pending = await self._queue.get()
            try:
                await self._post(pending)
            except (ApiError, OSError, TimeoutError) as error:
                logger.debug(
                    "event not posted for {} {}: {}", pending.ref.kind, pending.ref.name, error
                )

    async def _post(self, event: _Pending) -> None:
        ref = event.ref
        namespace = ref.namespace or "default"  # cluster-scoped objects: as the core does
        regarding = {"apiVersion": ref.api_version, "kind": ref.kind, "name": ref.name}
        if ref.namespace:
            regarding["namespace"] = ref.namespace
        if ref.uid:
            regarding["uid"] = ref.uid
        body = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {
                "name": f"{ref.name}.{time.time_ns():x}{secrets.token_hex(2)}",
                "namespace": namespace,
            },
            "eventTime": _micro_time(event.moment),
            "reportingController": REPORTING_CONTROLLER,
            "reportingInstance": self._instance,
            "action": event.action,
            "reason": event.reason,
            "note": event.note,
            "type": event.type,
            "regarding": regarding,
        }
        await self._api.create(events_path(namespace), body)
