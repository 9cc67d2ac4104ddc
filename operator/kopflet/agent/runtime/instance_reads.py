"""What a sync pass last read of one instance's containers, kept for the next pass.

The kubelet's pod workers do not ask the runtime for a pod's status on every sync: they read
the pod status cache that PLEG keeps, and PLEG refreshes a pod's entry when it sees the pod's
containers change. Here the worker itself reads (one listing of the instance's containers and
an inspect of each) and keeps what it read; the next pass reuses it unless something says the
engine may have changed since:

* our own actions on the instance (the pass drops its read before acting, and reads again);
* a Docker event about one of its containers, *unless* the read was asked for after the
  engine logged the event: Docker makes a change visible to listings and inspects before it
  logs the event, so such a read already shows it (the start we just did, seen by the read
  that followed it);
* a relist that found one of its containers changed since the relist before, unless the read
  shows the same containers in the same states as the relist did (a relist cannot tell when
  in its period a change happened, but it can tell whether the read already has it);
* age: a read older than the resync period is not trusted (the periodic resync still looks at
  the engine itself, the backstop for anything no event told).

So a pass woken by its spec, a probe result or its own confirmation costs no engine request.
Times are the node's wall clock, which is also the engine's (it runs on the node).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kopflet.agent.runtime.labels import ContainerID
from kopflet.agent.runtime.records import ContainerRecord, RunState
from kopflet.api import UID


@dataclass(frozen=True)
class _Read:
    records: tuple[ContainerRecord, ...]
    #: When the listing was asked for: anything the engine finished before is in it.
    at: float


class InstanceReads:
    def __init__(self, *, max_age_seconds: float) -> None:
        self._max_age = max_age_seconds
        self._reads: dict[UID, _Read] = {}
        #: The latest time the engine is known to have changed an instance by (at the latest).
        self._changed: dict[UID, float] = {}

    def fresh(self, uid: UID, now: float) -> list[ContainerRecord] | None:
        """The kept read, if nothing since may have changed what it shows; else ``None``."""
        read = self._reads.get(uid)
        if read is None:
            return None
        if read.at <= self._changed.get(uid, -math.inf) or not 0.0 <= now - read.at < self._max_age:
            del self._reads[uid]
            return None
        return list(read.records)

    def store(self, uid: UID, records: Iterable[ContainerRecord], *, at: float) -> None:
        """A read whose listing was asked for at ``at``."""
        self._reads[uid] = _Read(tuple(records), at)

    def changed(self, uid: UID, *, at: float) -> bool:
        """The engine changed the instance at ``at`` or before. True if the kept read may not
        show it (there is none, or it was asked for no later): the instance needs a pass."""
        self._changed[uid] = max(self._changed.get(uid, at), at)
        read = self._reads.get(uid)
        return read is None or read.at <= at

    def listed(self, uid: UID, states: Mapping[ContainerID, RunState], *, at: float) -> bool:
        """A relist that returned at ``at`` found the instance changed and its containers
        now in ``states``. True if the kept read does not show them so: it needs a pass."""
        read = self._reads.get(uid)
        if read is not None and {r.id: r.state for r in read.records} == dict(states):
            return False
        return self.changed(uid, at=at)

    def acting(self, uid: UID) -> None:
        """The instance's pass is about to change it on the engine: the read is stale."""
        self._reads.pop(uid, None)

    def forget(self, uid: UID) -> None:
        self._reads.pop(uid, None)
        self._changed.pop(uid, None)

    def __len__(self) -> int:
        return len(self._reads)
