"""A work queue of object keys, client-go style, on asyncio.

* A key is queued at most once, however many events name it (events only wake the reconciler;
  the reconciler re-reads the state).
* A key is handed to one worker at a time; added again while it is being processed, it is
  queued once more when that worker is done (a change is never lost, never handled twice at
  once).
* ``add_after`` queues a key later (a deadline such as a progress deadline or minReadySeconds);
  the earliest of several requested times wins.
* ``retry`` queues a failed key with a per-key exponential back-off; ``forget`` resets it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

BASE_BACKOFF_SECONDS = 0.05
MAX_BACKOFF_SECONDS = 60.0


class WorkQueue(Generic[K]):
    def __init__(
        self,
        name: str,
        *,
        on_latency: Callable[[float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self._ready: deque[K] = deque()
        self._queued_at: dict[K, float] = {}  # queued and not yet handed out
        self._processing: set[K] = set()
        self._dirty: set[K] = set()  # added again while processing
        self._timers: dict[K, tuple[float, asyncio.TimerHandle]] = {}
        self._failures: dict[K, int] = {}
        self._wakeup = asyncio.Event()
        self._on_latency = on_latency
        self._on_depth = on_depth
        self._closed = False

    def __len__(self) -> int:
        return len(self._ready)

    def _loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def add(self, key: K) -> None:
        if self._closed:
            return
        if key in self._processing:
            self._dirty.add(key)
            return
        if key in self._queued_at:
            return
        self._queued_at[key] = self._loop().time()
        self._ready.append(key)
        self._wakeup.set()
        if self._on_depth:
            self._on_depth(len(self._ready))

    def add_after(self, key: K, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        loop = self._loop()
        when = loop.time() + delay
        existing = self._timers.get(key)
        if existing is not None:
            if existing[0] <= when:
                return
            existing[1].cancel()
        self._timers[key] = (when, loop.call_at(when, self._fire, key))

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def retry(self, key: K) -> float:
        """Queue a failed key again after its back-off; returns the delay chosen."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay: float = min(MAX_BACKOFF_SECONDS, BASE_BACKOFF_SECONDS * 2.0**failures)
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        self._failures.pop(key, None)

    async def get(self) -> K:
        while not self._ready:
            self._wakeup.clear()
            await self._wakeup.wait()
        key = self._ready.popleft()
        queued_at = self._queued_at.pop(key)
        self._processing.add(key)
        if self._on_latency:
            self._on_latency(self._loop().time() - queued_at)
        if self._on_depth:
            self._on_depth(len(self._ready))
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def close(self) -> None:
        self._closed = True
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
