"""Kubernetes Events about the node's Instances (and the node), posted in the background.

``record`` never blocks: it counts the occurrence and marks it for writing; one loop
writes. A repeat of the same event (same object, type, reason and message) within the
series window bumps the ``series`` of the Event already posted instead of creating
another, and repeats that arrive faster than the loop writes collapse into one write, so
a container crash-looping for an hour is one Event with a count, as ``kubectl describe``
shows it ("x42 over 1h").
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol

from loguru import logger

from kopflet.agent import metrics
from kopflet.agent.kube_client import EVENTS_API, ApiError, ApiUnavailable, NotFound, object_path

EventType = Literal["Normal", "Warning"]

REPORTING_CONTROLLER: Final = "kopflet.dev/agent"
#: Repeats within this window join the same Event's series.
SERIES_WINDOW_SECONDS: Final = 600.0
#: Distinct events remembered for aggregation; the oldest are forgotten first.
MAX_TRACKED: Final = 4096
#: The API server refuses longer notes.
MAX_NOTE_BYTES: Final = 1024

#: The ``action`` (what was done) of the reasons the runtime reports.
_ACTIONS: Final = {
    "Pulling": "Pull",
    "Pulled": "Pull",
    "Failed": "Sync",
    "BackOff": "Restart",
    "Created": "Create",
    "Started": "Start",
    "Killing": "Kill",
    "Unhealthy": "Probe",
}


class EventsApi(Protocol):
    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]: ...

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True, kw_only=True)
class ObjectRef:
    """The object an Event is about (``regarding``)."""

    api_version: str
    kind: str
    name: str
    uid: str
    namespace: str = ""

    def to_dict(self) -> dict[str, str]:
        ref = {"apiVersion": self.api_version, "kind": self.kind, "name": self.name}
        ref["uid"] = self.uid
        if self.namespace:
            ref["namespace"] = self.namespace
        return ref

    @property
    def event_namespace(self) -> str:
        # Events of cluster-scoped objects (the NodeAgent) live in "default", as the
        # kubelet's Node events do.
        return self.namespace or "default"


EventKey = tuple[str, str, str, str]


@dataclass
class _Tracked:
    ref: ObjectRef
    type: EventType
    reason: str
    note: str
    first: float
    last: float
    count: int = 1
    #: The Event's name once created; ``None`` until then.
    name: str | None = None
    written_count: int = 0


def micro_time(epoch: float) -> str:
    """``metav1.MicroTime``: RFC 3339 with microseconds."""
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def truncate_note(note: str) -> str:
    raw = note.encode()
    if len(raw) <= MAX_NOTE_BYTES:
        return note
    return raw[: MAX_NOTE_BYTES - 3].decode(errors="ignore") + "..."


def event_name(regarding: str, first: float) -> str:
    """``<object>.<first occurrence, ns since the epoch, hex>``, as client-go names Events, and
    two random bytes against a twin. The API server lists an object's Events in name order,
    so in the order they happened, and `kubectl describe` keeps that order among Events that
    have no (deprecated) lastTimestamp, which no ``events.k8s.io/v1`` writer sets."""
    return f"{regarding}.{round(first * 1e9):x}{secrets.token_hex(2)}"


def event_body(tracked: _Tracked, *, name: str, reporting_instance: str) -> dict[str, Any]:
    """An ``events.k8s.io/v1`` Event. Pure."""
    body: dict[str, Any] = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": tracked.ref.event_namespace},
        "eventTime": micro_time(tracked.first),
        "reportingController": REPORTING_CONTROLLER,
        "reportingInstance": reporting_instance[:128],
        "action": _ACTIONS.get(tracked.reason, tracked.reason)[:128] or "Sync",
        "reason": tracked.reason[:128],
        "regarding": tracked.ref.to_dict(),
        "note": tracked.note,
        "type": tracked.type,
    }
    if tracked.count > 1:
        body["series"] = series(tracked)
    return body


def series(tracked: _Tracked) -> dict[str, Any]:
    return {"count": tracked.count, "lastObservedTime": micro_time(tracked.last)}


class EventRecorder:
    def __init__(
        self,
        api: EventsApi,
        *,
        reporting_instance: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._api = api
        self._instance = reporting_instance
        self._clock = clock
        self._tracked: OrderedDict[EventKey, _Tracked] = OrderedDict()
        self._dirty: set[EventKey] = set()
        self._wake = asyncio.Event()
        self.posted = 0

    def record(self, ref: ObjectRef, *, type: EventType, reason: str, message: str) -> None:
        now = self._clock()
        note = truncate_note(message)
        key: EventKey = (ref.uid, type, reason, note)
        tracked = self._tracked.get(key)
        if tracked is not None and now - tracked.last <= SERIES_WINDOW_SECONDS:
            tracked.count += 1
            tracked.last = now
            self._tracked.move_to_end(key)
        else:
            self._tracked[key] = _Tracked(
                ref=ref, type=type, reason=reason, note=note, first=now, last=now
            )
            self._tracked.move_to_end(key)
            while len(self._tracked) > MAX_TRACKED:
                oldest, _ = self._tracked.popitem(last=False)
                self._dirty.discard(oldest)
        self._dirty.add(key)
        self._expire(now)
        self._wake.set()

    def _expire(self, now: float) -> None:
        """Forget written events past the series window: a repeat makes a new Event anyway.
        The oldest come first (every record moves its event to the end)."""
        while self._tracked:
            key, oldest = next(iter(self._tracked.items()))
            if now - oldest.last <= SERIES_WINDOW_SECONDS or key in self._dirty:
                return
            del self._tracked[key]

    def forget(self, uid: str) -> None:
        """The object is gone for good: its events can join no series any more. Those not
        written yet stay until they are (then they expire with the window)."""
        for key in [k for k in self._tracked if k[0] == uid and k not in self._dirty]:
            del self._tracked[key]

    @property
    def tracked(self) -> int:
        return len(self._tracked)

    async def run(self, *, retry_seconds: float = 2.0) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not await self.flush():
                await asyncio.sleep(retry_seconds)
                self._wake.set()

    async def flush(self) -> bool:
        """Write every pending event; False if some must wait for the API server."""
        ok = True
        for key in sorted(self._dirty, key=lambda k: self._tracked[k].last):
            tracked = self._tracked.get(key)
            self._dirty.discard(key)
            if tracked is None or tracked.written_count == tracked.count:
                continue
            try:
                await self._write(tracked)
            except ApiUnavailable as exc:
                logger.debug("event {} waits: {}", tracked.reason, exc)
                self._dirty.add(key)
                ok = False
                break
            except ApiError as exc:
                # A refused event (its namespace is being deleted, say) is not retried.
                logger.debug("event {} dropped: {}", tracked.reason, exc)
        return ok

    async def _write(self, tracked: _Tracked) -> None:
        namespace = tracked.ref.event_namespace
        count = tracked.count
        if tracked.name is not None:
            path = object_path(EVENTS_API, "events", namespace=namespace, name=tracked.name)
            try:
                await self._api.merge_patch(path, {"series": series(tracked)})
                tracked.written_count = count
                self.posted += 1
                metrics.EVENTS_WRITTEN.inc()
                return
            except NotFound:
                tracked.name = None  # expired (events live an hour): start a new one
        name = event_name(tracked.ref.name, tracked.first)
        body = event_body(tracked, name=name, reporting_instance=self._instance)
        await self._api.create(object_path(EVENTS_API, "events", namespace=namespace), body)
        tracked.name = name
        tracked.written_count = count
        self.posted += 1
        metrics.EVENTS_WRITTEN.inc()
