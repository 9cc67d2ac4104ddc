"""List+watch of one kind: a store of its objects, and their changes handed on in order.

client-go's reflector, small: list (in pages) then watch from the list's resourceVersion
with bookmarks; a watch that ends is resumed from the last version seen; a 410 (the
version was compacted away) lists again, and the difference between the store and the
fresh list is handed on as changes, so a delete missed while disconnected is not lost.
Errors back off (0.5 s doubling to 30 s) and never end the loop: while the API server is
away the store keeps what it had, and nothing on the node changes (static stability).

The handler is awaited for each change in order, then once after every complete list
(``on_synced``): the point from which the store is the whole truth.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from loguru import logger

from kopflet.agent import metrics
from kopflet.agent.kube_client import ApiError, ApiUnavailable, Gone, JsonObject, api_error

Obj = Mapping[str, Any]
#: (namespace, name); namespace "" for cluster-scoped kinds.
ObjKey = tuple[str, str]


class WatchSource(Protocol):
    """What the informer needs of the API (:class:`KubeClient` has it; tests fake it)."""

    async def get(self, path: str, *, params: Mapping[str, str] | None = None) -> JsonObject: ...

    def watch(
        self, path: str, *, params: Mapping[str, str], server_timeout: int
    ) -> AsyncIterator[JsonObject]: ...


class InformerHandler(Protocol):
    async def on_change(self, old: Obj | None, new: Obj | None) -> None:
        """Added (old None), modified, or deleted (new None)."""

    async def on_synced(self, objects: list[Obj]) -> None:
        """A complete list has been applied: ``objects`` is everything there is."""


@dataclass(frozen=True, kw_only=True)
class WatchTarget:
    #: The collection, like ``/apis/kopflet.dev/v1alpha1/instances``.
    path: str
    field_selector: str | None = None
    label_selector: str | None = None

    def params(self) -> dict[str, str]:
        params = {}
        if self.field_selector:
            params["fieldSelector"] = self.field_selector
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        return params


def key_of(obj: Obj) -> ObjKey:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def resource_version_of(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def relist_changes(
    store: Mapping[ObjKey, Obj], fresh: Iterable[Obj]
) -> list[tuple[Obj | None, Obj | None]]:
    """What a fresh list changes against the store: adds, updates (another
    resourceVersion) and deletes, in a stable order. Pure."""
    fresh_by_key = {key_of(o): o for o in fresh}
    changes: list[tuple[Obj | None, Obj | None]] = []
    for key in sorted(store.keys() | fresh_by_key.keys()):
        old, new = store.get(key), fresh_by_key.get(key)
        unchanged = old is not None and new is not None
        if unchanged and resource_version_of(old or {}) == resource_version_of(new or {}):
            continue
        changes.append((old, new))
    return changes


@dataclass
class Backoff:
    initial: float = 0.5
    maximum: float = 30.0
    current: float = 0.0

    def next(self) -> float:
        self.current = self.initial if self.current == 0 else min(self.current * 2, self.maximum)
        return self.current

    def reset(self) -> None:
        self.current = 0.0


class Informer:
    def __init__(
        self,
        source: WatchSource,
        target: WatchTarget,
        handler: InformerHandler,
        *,
        name: str,
        page_size: int = 500,
        server_timeout: int = 300,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.name = name
        #: The metrics label: the collection's last path segment (``instances``, ``secrets``).
        self.kind = target.path.rsplit("/", 1)[-1]
        self.store: dict[ObjKey, Obj] = {}
        self.synced = asyncio.Event()
        self.resource_version: str | None = None
        self.lists = 0
        self._source = source
        self._target = target
        self._handler = handler
        self._page_size = page_size
        self._server_timeout = server_timeout
        self._backoff = backoff or Backoff()
        self._sleep = sleep

    async def run(self, *, max_rounds: int | None = None) -> None:
        """List and watch until cancelled (or ``max_rounds`` list/watch rounds, for tests)."""
        rounds = 0
        while max_rounds is None or rounds < max_rounds:
            rounds += 1
            try:
                if self.resource_version is None:
                    await self._list()
                if await self._watch_once():
                    self._backoff.reset()
                    continue
                delay = self._backoff.next()
            except Gone:
                # Compacted away while we were disconnected: the relist finds what changed.
                self.resource_version = None
                delay = self._backoff.next()
                logger.info("{}: resourceVersion expired, listing again", self.name)
            except (ApiUnavailable, ApiError) as exc:
                metrics.WATCH_ERRORS.labels(self.kind).inc()
                delay = self._backoff.next()
                logger.warning("{}: {} (retrying in {:.1f}s)", self.name, exc, delay)
            if delay:
                await self._sleep(delay)

    async def _list(self) -> None:
        items: list[Obj] = []
        params = {**self._target.params(), "limit": str(self._page_size)}
        version = ""
        while True:
            page = await self._source.get(self._target.path, params=params)
            items += page.get("items") or []
            meta = page.get("metadata") or {}
            version = str(meta.get("resourceVersion") or version)
            token = meta.get("continue")
            if not token:
                break
            params = {**params, "continue": str(token)}
        for old, new in relist_changes(self.store, items):
            if new is None:
                assert old is not None
                del self.store[key_of(old)]
            else:
                self.store[key_of(new)] = new
            await self._handler.on_change(old, new)
        self.resource_version = version
        self.lists += 1
        await self._handler.on_synced(list(self.store.values()))
        self.synced.set()

    async def _watch_once(self) -> bool:
        """One watch request; ``True`` if it delivered something or ran its course (resume
        at once), ``False`` if it ended at once without anything (back off first)."""
        assert self.resource_version is not None
        params = {
            **self._target.params(),
            "resourceVersion": self.resource_version,
            "allowWatchBookmarks": "true",
        }
        started = time.monotonic()
        delivered = False
        async for event in self._source.watch(
            self._target.path, params=params, server_timeout=self._server_timeout
        ):
            delivered = True
            await self._apply(event)
        return delivered or time.monotonic() - started > 1.0

    async def _apply(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        obj: Obj = event.get("object") or {}
        if kind == "ERROR":
            raise api_error(int(obj.get("code") or 500), obj)
        version = resource_version_of(obj)
        if kind == "BOOKMARK":
            self.resource_version = version or self.resource_version
            return
        key = key_of(obj)
        if kind in ("ADDED", "MODIFIED"):
            old = self.store.get(key)
            self.store[key] = obj
            self.resource_version = version or self.resource_version
            await self._handler.on_change(old, obj)
        elif kind == "DELETED":
            self.store.pop(key, None)
            self.resource_version = version or self.resource_version
            await self._handler.on_change(obj, None)
