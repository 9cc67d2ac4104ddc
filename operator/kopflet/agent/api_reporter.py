"""The runtime's :class:`RuntimeReporter` over the API: status, finalizer, Events.

The runtime engine is the single writer of its Instances' status and calls this only when
the status changed; this turns the change into a merge patch of the fields that differ,
conditional on the Instance's uid, so a status computed for a deleted Instance never lands
on a new one of the same name.

A write that timed out may still land later, after a newer one (the API server was frozen
with both queued): the watched copy then holds an older status than ours, at a newer
version. :meth:`ApiReporter.overwritten` tells that apart from a watch that has not caught
up yet, and the next write is computed against the watched copy, so it puts ours back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from loguru import logger

from kopflet.agent import metrics
from kopflet.agent.event_recorder import EventRecorder, ObjectRef
from kopflet.agent.instance_finalizers import FinalizerWriter
from kopflet.agent.kube_client import KOPFLET_API, NotFound, object_path
from kopflet.agent.runtime.reporting import EventType, InstanceRef
from kopflet.agent.status_patch import status_merge_patch, version_after
from kopflet.api import UID, Instance, InstanceStatus, ModelError
from kopflet.api.constants import API_VERSION, INSTANCE_KIND, INSTANCE_PLURAL


class StatusApi(Protocol):
    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]: ...


def instance_object_ref(ref: InstanceRef) -> ObjectRef:
    return ObjectRef(
        api_version=API_VERSION,
        kind=INSTANCE_KIND,
        name=ref.name,
        namespace=ref.namespace,
        uid=ref.uid,
    )


class ApiReporter:
    def __init__(
        self, api: StatusApi, *, events: EventRecorder, finalizers: FinalizerWriter
    ) -> None:
        self._api = api
        self._events = events
        self._finalizers = finalizers
        #: The last status written per Instance (the watch may not have echoed it yet).
        self._written: dict[UID, dict[str, Any]] = {}
        #: The server's answer to that write: the version it made and the status it holds.
        self._echo: dict[UID, tuple[str, dict[str, Any]]] = {}
        self.status_writes = 0

    async def instance_status(self, instance: Instance, status: InstanceStatus) -> None:
        meta = instance.metadata
        assert meta.uid is not None
        new = status.to_dict()
        observed = instance.status.to_dict() if instance.status is not None else None
        if self.overwritten(instance):
            # The watched copy is newer than our last write and lacks it: it is the base.
            logger.info(
                "status of {}/{} was overwritten: writing it again", meta.namespace, meta.name
            )
            bases = [observed]
        else:
            bases = [self._written.get(meta.uid) or observed, observed]
        patch = status_merge_patch(new, bases)
        if not patch:
            self._written[meta.uid] = new
            return
        path = object_path(
            KOPFLET_API,
            INSTANCE_PLURAL,
            namespace=meta.namespace or "default",
            name=meta.name,
            subresource="status",
        )
        try:
            answer = await self._api.merge_patch(
                path, {"metadata": {"uid": meta.uid}, "status": patch}
            )
        except NotFound:
            # Deleted meanwhile; the watch will say so and the engine forgets it.
            logger.debug("status of {}/{} not written: gone", meta.namespace, meta.name)
            return
        self._written[meta.uid] = new
        self._remember_echo(meta.uid, answer)
        self.status_writes += 1
        metrics.INSTANCE_STATUS_WRITES.inc()

    def overwritten(self, instance: Instance) -> bool:
        """Whether the watched copy is past our last status write and holds another status:
        somebody, or a late request of ours, wrote over it. False while the watch lags."""
        uid = instance.metadata.uid
        echo = self._echo.get(uid) if uid is not None else None
        seen = instance.metadata.resource_version
        if echo is None or seen is None or not version_after(seen, echo[0]):
            return False
        return (instance.status.to_dict() if instance.status is not None else {}) != echo[1]

    def _remember_echo(self, uid: UID, answer: Mapping[str, Any]) -> None:
        version = (answer.get("metadata") or {}).get("resourceVersion")
        try:
            status = InstanceStatus.from_dict(answer.get("status") or {}).to_dict()
        except ModelError:
            status = None
        if isinstance(version, str) and status is not None:
            self._echo[uid] = (version, status)
        else:
            self._echo.pop(uid, None)

    async def instance_cleaned_up(self, instance: Instance) -> None:
        meta = instance.metadata
        assert meta.uid is not None
        self._written.pop(meta.uid, None)
        self._echo.pop(meta.uid, None)
        self._finalizers.request(instance, present=False)

    def event(self, ref: InstanceRef, *, type: EventType, reason: str, message: str) -> None:
        self._events.record(instance_object_ref(ref), type=type, reason=reason, message=message)

    def forget(self, uid: UID) -> None:
        """The Instance left this node: its last written status and its Events' series
        are of no use any more."""
        self._written.pop(uid, None)
        self._echo.pop(uid, None)
        self._events.forget(uid)
