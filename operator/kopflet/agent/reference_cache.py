"""The ConfigMaps and Secrets this node's Instances reference, watched, for the runtime.

Implements the runtime's :class:`ReferenceResolver` from memory, so a missing object or key
is known at once (``CreateContainerConfigError``) rather than after an API round trip.

Watched per (kind, namespace), and only in namespaces where an Instance of this node
references that kind: the agent holds the objects it may need, not every Secret of the
cluster. A namespace is watched before its first referencing Instance reaches the engine
(:meth:`ReferenceCache.track` waits for the first list, bounded), so an Instance created
together with its ConfigMap does not flash a config error. A change of any watched object
wakes every instance: the engine re-reads what it uses (env of a new container, volume files).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

from loguru import logger

from kopflet.agent.informer import Informer, Obj, WatchSource, WatchTarget
from kopflet.api import Instance

RefKind = Literal["configmaps", "secrets"]
#: (kind, namespace): one watch.
RefScope = tuple[RefKind, str]


def referenced_scopes(instance: Instance) -> set[RefScope]:
    """Which kinds the instance reads from its namespace (env, envFrom, volumes). Pure."""
    kinds: set[RefKind] = set()
    for container in instance.spec.containers:
        for var in container.env or ():
            source = var.value_from
            if source is not None and source.config_map_key_ref is not None:
                kinds.add("configmaps")
            if source is not None and source.secret_key_ref is not None:
                kinds.add("secrets")
        for env_from in container.env_from or ():
            if env_from.config_map_ref is not None:
                kinds.add("configmaps")
            if env_from.secret_ref is not None:
                kinds.add("secrets")
    for volume in instance.spec.volumes or ():
        if volume.config_map is not None:
            kinds.add("configmaps")
        if volume.secret is not None:
            kinds.add("secrets")
    namespace = instance.metadata.namespace or "default"
    return {(kind, namespace) for kind in kinds}


def config_map_data(obj: Obj) -> dict[str, bytes]:
    """``data`` UTF-8 encoded and ``binaryData`` decoded, as the resolver hands them out."""
    data = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
    for key, value in (obj.get("binaryData") or {}).items():
        with contextlib.suppress(binascii.Error, ValueError):
            data[key] = base64.b64decode(str(value), validate=True)
    return data


def secret_data(obj: Obj) -> dict[str, bytes]:
    data = {}
    for key, value in (obj.get("data") or {}).items():
        with contextlib.suppress(binascii.Error, ValueError):
            data[key] = base64.b64decode(str(value), validate=True)
    return data


class _ScopeHandler:
    def __init__(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        self.synced = False

    async def on_change(self, old: Obj | None, new: Obj | None) -> None:
        if self.synced:
            self._on_change()

    async def on_synced(self, objects: list[Obj]) -> None:
        # A relist after a disconnection may have brought changes missed meanwhile.
        self.synced = True
        self._on_change()


class ReferenceCache:
    def __init__(
        self,
        source: WatchSource,
        *,
        on_change: Callable[[], None],
        sync_timeout: float = 10.0,
    ) -> None:
        self._source = source
        self._on_change = on_change
        self._sync_timeout = sync_timeout
        self._informers: dict[RefScope, Informer] = {}
        self._tasks: dict[RefScope, asyncio.Task[None]] = {}

    # -- ReferenceResolver ---------------------------------------------------------------

    def config_map(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        obj = self._lookup(("configmaps", namespace), name)
        return None if obj is None else config_map_data(obj)

    def secret(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        obj = self._lookup(("secrets", namespace), name)
        return None if obj is None else secret_data(obj)

    def _lookup(self, scope: RefScope, name: str) -> Obj | None:
        informer = self._informers.get(scope)
        return None if informer is None else informer.store.get((scope[1], name))

    # -- which scopes are watched -------------------------------------------------------------

    @property
    def scopes(self) -> set[RefScope]:
        return set(self._informers)

    async def track(self, wanted: Iterable[RefScope]) -> None:
        """Watch exactly ``wanted``; returns once the new scopes are listed (or the sync
        timeout passed: then their Instances see config errors until the list arrives, and
        are woken when it does)."""
        wanted = set(wanted)
        for scope in self.scopes - wanted:
            self._informers.pop(scope)
            self._tasks.pop(scope).cancel()
        fresh = []
        for scope in sorted(wanted - self.scopes):
            kind, namespace = scope
            informer = Informer(
                self._source,
                WatchTarget(path=f"/api/v1/namespaces/{namespace}/{kind}"),
                _ScopeHandler(self._on_change),
                name=f"{kind} in {namespace}",
            )
            self._informers[scope] = informer
            self._tasks[scope] = asyncio.create_task(
                informer.run(), name=f"watch-{kind}-{namespace}"
            )
            fresh.append(informer)
        if not fresh:
            return
        waits = [asyncio.ensure_future(i.synced.wait()) for i in fresh]
        _done, pending = await asyncio.wait(waits, timeout=self._sync_timeout)
        for waiter in pending:
            waiter.cancel()
        if pending:
            logger.warning(
                "{} reference watch(es) not listed after {:.0f}s; going on",
                len(pending),
                self._sync_timeout,
            )

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._informers.clear()
