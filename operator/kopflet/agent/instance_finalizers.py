"""The agent's finalizer on its node's Instances: added while they live, removed once their
containers are gone, so ``kubectl delete`` returns only when the node is clean.

Requests are recorded (the latest per Instance wins) and written by one background loop
with retries, so neither the watch nor the runtime engine waits on the API server; an API
server that is away delays the removal, it does not lose it.

No request that changes nothing: a request that repeats the one just written is dropped, and
a removal is written once per Instance. The removal is a JSON patch that tests the list entry
it removes (and the uid), not the whole object's resourceVersion: the agent's own status
write a moment before it (Terminating) would otherwise make it conflict every time.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from loguru import logger

from kopflet.agent.kube_client import (
    KOPFLET_API,
    ApiError,
    ApiUnavailable,
    Conflict,
    Invalid,
    JsonObject,
    NotFound,
    object_path,
)
from kopflet.agent.status_patch import (
    finalizer_patch,
    finalizers_with,
    finalizers_without,
)
from kopflet.api import UID, Instance
from kopflet.api.constants import AGENT_FINALIZER, INSTANCE_PLURAL

#: Conflicts in a row before a request waits for the next round.
MAX_CONFLICTS = 5
#: Settled Instances remembered (a few bursts' worth; then the oldest are forgotten).
MAX_SETTLED = 4096


class FinalizerApi(Protocol):
    """What the writer needs of the API (``KubeClient`` has it)."""

    async def get(self, path: str, *, params: Mapping[str, str] | None = None) -> JsonObject: ...

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> JsonObject: ...

    async def json_patch(self, path: str, operations: list[Mapping[str, Any]]) -> JsonObject: ...


@dataclass(frozen=True, kw_only=True)
class FinalizerRequest:
    uid: UID
    namespace: str
    name: str
    present: bool
    #: What the watch last showed, to try without a GET first.
    resource_version: str
    finalizers: tuple[str, ...]


def _path(namespace: str, name: str) -> str:
    return object_path(KOPFLET_API, INSTANCE_PLURAL, namespace=namespace, name=name)


def removal_patch(uid: str, finalizers: list[str], finalizer: str) -> list[Mapping[str, Any]]:
    """A JSON patch removing ``finalizer`` at the place it has in ``finalizers``, on the
    condition that it is still there and the object is still the same one (422 otherwise).
    Other changes of the object since it was read do not stand in its way."""
    index = finalizers.index(finalizer)
    where = f"/metadata/finalizers/{index}"
    return [
        {"op": "test", "path": "/metadata/uid", "value": uid},
        {"op": "test", "path": where, "value": finalizer},
        {"op": "remove", "path": where},
    ]


class FinalizerWriter:
    def __init__(
        self,
        api: FinalizerApi,
        *,
        finalizer: str = AGENT_FINALIZER,
        retry_seconds: float = 2.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._api = api
        self.finalizer = finalizer
        self._retry_seconds = retry_seconds
        self._sleep = sleep
        self._pending: dict[UID, FinalizerRequest] = {}
        #: Instances whose finalizer this writer removed, or that are gone: nothing more to
        #: write for them. The runtime engine may report an Instance cleaned up again after
        #: the watch saw it go; uids never come back, so the newest ones are kept, bounded.
        self._settled: OrderedDict[UID, None] = OrderedDict()
        self._wake = asyncio.Event()

    def needs_adding(self, instance: Instance) -> bool:
        meta = instance.metadata
        return meta.deletion_timestamp is None and self.finalizer not in (meta.finalizers or ())

    def request(self, instance: Instance, *, present: bool) -> None:
        meta = instance.metadata
        assert meta.uid is not None
        if meta.uid in self._settled:
            return  # removed already, or gone: a finalizer is never added back
        self._pending[meta.uid] = FinalizerRequest(
            uid=meta.uid,
            namespace=meta.namespace or "default",
            name=meta.name or "",
            present=present,
            resource_version=meta.resource_version or "",
            finalizers=tuple(meta.finalizers or ()),
        )
        self._wake.set()

    def forget(self, uid: UID) -> None:
        """The Instance is gone: nothing left to write, now or later."""
        self._pending.pop(uid, None)
        self._settle(uid)

    def _settle(self, uid: UID) -> None:
        self._settled[uid] = None
        self._settled.move_to_end(uid)
        while len(self._settled) > MAX_SETTLED:
            self._settled.popitem(last=False)

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def run(self, *, max_rounds: int | None = None) -> None:
        rounds = 0
        while True:
            self._wake.clear()
            retry = not await self.write_pending()
            rounds += 1
            if max_rounds is not None and rounds >= max_rounds:
                return
            if self._wake.is_set():
                continue
            if retry:
                await self._sleep(self._retry_seconds)
            else:
                await self._wake.wait()

    async def write_pending(self) -> bool:
        """One pass over the requests; False if some must be retried later."""
        done = True
        for uid, request in list(self._pending.items()):
            if await self._write(request):
                if not request.present:
                    self._settle(uid)
                # A newer request may have arrived while this one was written: it stays
                # only if it asks for the opposite.
                newer = self._pending.get(uid)
                if newer is not None and newer.present == request.present:
                    del self._pending[uid]
            else:
                done = False
        return done

    async def _write(self, request: FinalizerRequest) -> bool:
        """True when done (written, not needed, or the Instance is gone)."""
        path = _path(request.namespace, request.name)
        version, finalizers = request.resource_version, list(request.finalizers)
        deleting = False
        for _ in range(MAX_CONFLICTS):
            if request.present:
                # An object being deleted takes no new finalizers; it is cleaned up anyway.
                wanted = None if deleting else finalizers_with(finalizers, self.finalizer)
            else:
                wanted = finalizers_without(finalizers, self.finalizer)
            if wanted is None:
                return True
            try:
                if request.present:
                    await self._api.merge_patch(
                        path, finalizer_patch(resource_version=version, finalizers=wanted)
                    )
                else:
                    await self._api.json_patch(
                        path, removal_patch(request.uid, finalizers, self.finalizer)
                    )
                verb = "added" if request.present else "removed"
                logger.info(
                    "finalizer {} {} on {}/{}",
                    self.finalizer,
                    verb,
                    request.namespace,
                    request.name,
                )
                return True
            except NotFound:
                return True
            except (Conflict, Invalid):
                pass  # changed since it was read: read it again
            except (ApiUnavailable, ApiError) as exc:
                logger.warning("finalizer of {}/{}: {}", request.namespace, request.name, exc)
                return False
            try:
                fresh = await self._api.get(path)
            except NotFound:
                return True
            except (ApiUnavailable, ApiError) as exc:
                logger.warning("finalizer of {}/{}: {}", request.namespace, request.name, exc)
                return False
            meta = fresh.get("metadata") or {}
            if meta.get("uid") != request.uid:
                return True  # a new object of the same name: not the one we meant
            version = str(meta.get("resourceVersion") or "")
            finalizers = list(meta.get("finalizers") or ())
            deleting = meta.get("deletionTimestamp") is not None
        return False
