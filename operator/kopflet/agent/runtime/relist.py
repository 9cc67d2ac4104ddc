"""PLEG-style relist: list our containers, compare with the previous listing, derive events.

One listing a second and no inspect: the states in the listing are all it compares. An
instance's own sync pass inspects its containers afresh when the relist wakes it.

Docker events wake the sync at once, but they can be lost (a broken stream, an agent
restart); the relist is the backstop that sees every change eventually. Its age is the
runtime half's health: a relist that has not completed for a while means the engine is
hung or gone, and the node must not claim to be Ready.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from kopflet.agent.runtime.clock import Clock
from kopflet.agent.runtime.container_runtime import ContainerRuntime
from kopflet.agent.runtime.labels import ContainerID
from kopflet.agent.runtime.records import ContainerState, RunState
from kopflet.api import UID


class LifecycleKind(StrEnum):
    STARTED = "ContainerStarted"
    DIED = "ContainerDied"
    REMOVED = "ContainerRemoved"
    CHANGED = "ContainerChanged"


@dataclass(frozen=True, kw_only=True)
class LifecycleEvent:
    instance_uid: UID
    container_id: ContainerID
    kind: LifecycleKind


def transition(old: RunState | None, new: RunState | None) -> tuple[LifecycleKind, ...]:
    """The events between two observations of one container (``None``: not listed)."""
    if old == new:
        return ()
    if new is RunState.RUNNING:
        return (LifecycleKind.STARTED,)
    if new is RunState.EXITED:
        return (LifecycleKind.DIED,)
    if new is None:
        # It vanished while running: it died on the way, which the sync must hear too.
        died = (LifecycleKind.DIED,) if old is RunState.RUNNING else ()
        return (*died, LifecycleKind.REMOVED)
    return (LifecycleKind.CHANGED,)


class Observed(Protocol):
    """What the relist compares of a container (a listing's state or a whole record)."""

    @property
    def instance_uid(self) -> UID: ...

    @property
    def state(self) -> RunState: ...


def diff_records(
    old: Mapping[ContainerID, Observed], new: Mapping[ContainerID, Observed]
) -> list[LifecycleEvent]:
    events = []
    for cid in sorted(old.keys() | new.keys()):
        before, after = old.get(cid), new.get(cid)
        record = after or before
        assert record is not None
        for kind in transition(before.state if before else None, after.state if after else None):
            events.append(
                LifecycleEvent(instance_uid=record.instance_uid, container_id=cid, kind=kind)
            )
    return events


class Relister:
    def __init__(self, runtime: ContainerRuntime, clock: Clock) -> None:
        self._runtime = runtime
        self._clock = clock
        self._records: dict[ContainerID, ContainerState] = {}
        self._last_relist: float | None = None

    @property
    def records(self) -> Mapping[ContainerID, ContainerState]:
        return self._records

    @property
    def listed_once(self) -> bool:
        return self._last_relist is not None

    async def relist(self) -> list[LifecycleEvent]:
        """One listing; raises what the runtime raises (and then the age keeps growing)."""
        started = self._clock.now()
        current = {r.id: r for r in await self._runtime.list_container_states()}
        events = diff_records(self._records, current)
        self._records = current
        # The start of the listing: anything that changed after it may not be in it.
        self._last_relist = started
        return events

    def age(self, now: float) -> float:
        return math.inf if self._last_relist is None else max(0.0, now - self._last_relist)

    def healthy(self, now: float, *, threshold_seconds: float) -> bool:
        return self.age(now) <= threshold_seconds

    def instance_uids(self) -> set[UID]:
        return {r.instance_uid for r in self._records.values()}
