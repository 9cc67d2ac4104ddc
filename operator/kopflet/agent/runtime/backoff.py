"""Exponential back-off per key: CrashLoopBackOff for restarts, ImagePullBackOff for pulls.

The kubelet's rule, kept: the first failure of a key is retried at once and arms the
back-off at the initial delay; every later failure inside the window waits the current
delay (measured from the failure), then doubles it up to the maximum. A container that
ran for ``reset_after`` seconds before failing starts over from the initial delay.

Pure data and functions; the state lives in the engine's memory, so a restarted agent
forgets it (like the kubelet) and at worst restarts a crashing container once early.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, kw_only=True)
class BackoffPolicy:
    initial_seconds: float = 10.0
    max_seconds: float = 300.0
    #: A failure after this much healthy running forgets the previous failures.
    reset_after_seconds: float = 600.0


@dataclass(frozen=True, kw_only=True)
class BackoffEntry:
    #: The wait applied to the next failure of this key.
    delay: float
    #: When the failure that armed (or last bumped) this entry happened.
    since: float


def retry_at(entry: BackoffEntry | None, *, failed_at: float) -> float | None:
    """When a failure at ``failed_at`` may be retried; ``None`` when at once."""
    if entry is None:
        return None
    return failed_at + entry.delay


def in_backoff(entry: BackoffEntry | None, *, failed_at: float, now: float) -> bool:
    at = retry_at(entry, failed_at=failed_at)
    return at is not None and now < at


def next_entry(
    entry: BackoffEntry | None,
    policy: BackoffPolicy,
    *,
    failed_at: float,
    ran_for: float = 0.0,
) -> BackoffEntry:
    """The entry after retrying a failure at ``failed_at``."""
    fresh = entry is None or ran_for >= policy.reset_after_seconds
    if fresh or entry is None:
        return BackoffEntry(delay=policy.initial_seconds, since=failed_at)
    return BackoffEntry(delay=min(entry.delay * 2, policy.max_seconds), since=failed_at)


class BackoffTable(Generic[K]):
    """The mutable side: entries by key, owned by the engine and read by the planner."""

    def __init__(self) -> None:
        self._entries: dict[K, BackoffEntry] = {}

    def get(self, key: K) -> BackoffEntry | None:
        return self._entries.get(key)

    def put(self, key: K, entry: BackoffEntry) -> None:
        self._entries[key] = entry

    def forget(self, predicate: Callable[[K], bool]) -> None:
        """Drop every key for which ``predicate(key)`` is true (an instance that is gone)."""
        for key in [k for k in self._entries if predicate(k)]:
            del self._entries[key]
