"""Writes a controller has made but not yet seen come back through its watch.

The cache lags the API server: right after creating Instances, a pass that reads the cache
would not see them and would create them again (a surge past maxSurge); right after deleting,
it would delete again. Like the core's ControllerExpectations, a key with writes in flight is
not acted on until the cache shows them all, or until they expire (a lost watch event must not
stall a Workload forever). Checked level-wise against the cache, not by counting events.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from loguru import logger

K = TypeVar("K", bound=Hashable)

#: As the core's: long enough for a watch that lags behind a busy API server.
DEFAULT_TTL_SECONDS = 300.0


@dataclass
class _Pending:
    creates: dict[str, float] = field(default_factory=dict)  # name -> deadline
    deletes: dict[str, float] = field(default_factory=dict)  # uid -> deadline


class Expectations(Generic[K]):
    def __init__(
        self, *, clock: Callable[[], float], ttl_seconds: float = DEFAULT_TTL_SECONDS
    ) -> None:
        self._clock = clock
        self._ttl = ttl_seconds
        self._pending: dict[K, _Pending] = {}

    def expect_creates(self, key: K, names: Collection[str]) -> None:
        deadline = self._clock() + self._ttl
        pending = self._pending.setdefault(key, _Pending())
        pending.creates.update(dict.fromkeys(names, deadline))

    def expect_deletes(self, key: K, uids: Collection[str]) -> None:
        deadline = self._clock() + self._ttl
        pending = self._pending.setdefault(key, _Pending())
        pending.deletes.update(dict.fromkeys(uids, deadline))

    def create_failed(self, key: K, name: str) -> None:
        """The API refused: nothing will come back for this name."""
        pending = self._pending.get(key)
        if pending is not None:
            pending.creates.pop(name, None)

    def delete_failed(self, key: K, uid: str) -> None:
        pending = self._pending.get(key)
        if pending is not None:
            pending.deletes.pop(uid, None)

    def satisfied(
        self, key: K, *, present_names: Collection[str], live_uids: Collection[str]
    ) -> bool:
        """True once every expected create is in the cache and every expected delete is gone
        from the live (not terminating) objects; drops what it finds met or expired."""
        pending = self._pending.get(key)
        if pending is None:
            return True
        now = self._clock()
        creates = {n: d for n, d in pending.creates.items() if n not in present_names}
        deletes = {u: d for u, d in pending.deletes.items() if u in live_uids}
        pending.creates = {n: d for n, d in creates.items() if d > now}
        pending.deletes = {u: d for u, d in deletes.items() if d > now}
        expired = len(creates) + len(deletes) - len(pending.creates) - len(pending.deletes)
        if expired:
            logger.warning(
                "{}: {} expected writes never showed in the watch; acting anyway", key, expired
            )
        if pending.creates or pending.deletes:
            return False
        del self._pending[key]
        return True

    def seconds_until_expiry(self, key: K) -> float | None:
        pending = self._pending.get(key)
        if pending is None:
            return None
        deadlines = [*pending.creates.values(), *pending.deletes.values()]
        return max(0.0, min(deadlines) - self._clock()) if deadlines else None

    def forget(self, key: K) -> None:
        self._pending.pop(key, None)
