"""Injectable time: the engine, the back-off and the probes never read the clock directly.

Wall-clock seconds, because the engine reports container start and finish times in wall
time and back-off is measured from them. Tests pass a fake that records the sleeps asked
for instead of sleeping (assert the delays, don't wait for them).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol

from kopflet.api import Timestamp, format_timestamp


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


def timestamp(epoch_seconds: float) -> Timestamp:
    return format_timestamp(datetime.fromtimestamp(epoch_seconds, tz=UTC))
