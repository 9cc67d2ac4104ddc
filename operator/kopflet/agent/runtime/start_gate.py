"""How many containers a node's engine creates and starts at once.

Every instance has its own sync worker, so a burst of instances bound to one node asks the
engine for all of their containers together. Past a few in flight the engine only shares
the same CPU among more of them: every start finishes late, none early. The gate lets a
bounded number through, in arrival order; the rest wait their turn without holding a
thread. It covers a container's create and start (and a sandbox's), never an image pull,
which waits on a registry rather than on the node.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from kopflet.agent.runtime import metrics


class StartGate:
    """At most ``limit`` creates-and-starts in flight (``0``: no limit)."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"the number of parallel starts cannot be negative: {limit}")
        self._slots = asyncio.Semaphore(limit) if limit else None

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots is None:
            yield
            return
        metrics.STARTS_WAITING.inc()
        try:
            await self._slots.acquire()
        finally:
            metrics.STARTS_WAITING.dec()
        try:
            yield
        finally:
            self._slots.release()
