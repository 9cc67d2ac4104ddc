"""Injectable time for the sync loop: rate limits and resync periods are tested by
asserting the waits asked for, never by sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol


class ProxyClock(Protocol):
    def monotonic(self) -> float:
        """Seconds for intervals: rate limit, resync period, canary checks."""
        ...

    def time(self) -> float:
        """Wall-clock seconds, for the last-successful-sync metric."""
        ...

    async def wait(self, event: asyncio.Event, timeout: float | None) -> None:
        """Return when ``event`` is set or ``timeout`` seconds passed (forever if None)."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def wait(self, event: asyncio.Event, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


class FakeClock:
    """Time moves only when the loop waits: by the whole timeout it asked for."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.waits: list[float | None] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def wait(self, event: asyncio.Event, timeout: float | None) -> None:
        self.waits.append(timeout)
        await asyncio.sleep(0)  # let other tasks run, as a real wait would
        if event.is_set():
            return
        if timeout is None:
            await event.wait()
            return
        self.now += timeout
