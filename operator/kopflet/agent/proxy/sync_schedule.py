"""When the next sync runs, and whether it is full: the rate limiter and resync timer.

Pure bookkeeping over monotonic seconds (kube-proxy's bounded-frequency runner, with
kube-proxy's rules): nothing before the initial lists are complete; requests coalesce
and run no sooner than ``min_interval`` after the previous sync; a full sync at least
every ``full_period``; after a failure the next sync is full and is retried with a
back-off from ``min_interval`` up to ``full_period``; the canary is checked every
``canary_interval`` once something has been programmed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SyncPolicy:
    min_interval: float = 1.0
    full_period: float = 30.0
    canary_interval: float = 5.0


class SyncSchedule:
    def __init__(self, policy: SyncPolicy | None = None) -> None:
        self.policy = policy or SyncPolicy()
        self.initial_lists_complete = False
        self.requested = False
        self.needs_full = True
        self.failures = 0
        self.last_attempt: float | None = None
        self.last_full_success: float | None = None
        self.last_canary_check: float | None = None

    def request(self) -> None:
        self.requested = True

    def request_full(self) -> None:
        self.requested = True
        self.needs_full = True

    def _retry_gap(self) -> float:
        if self.failures == 0:
            return self.policy.min_interval
        backoff = self.policy.min_interval * 2.0 ** (self.failures - 1)
        return min(max(backoff, self.policy.min_interval), self.policy.full_period)

    def next_sync_at(self) -> float | None:
        """Monotonic time of the next sync, or ``None`` while there's nothing to wait for."""
        if not self.initial_lists_complete:
            return None
        if self.last_attempt is None:
            return -math.inf
        earliest = self.last_attempt + self._retry_gap()
        if self.requested or self.needs_full or self.last_full_success is None:
            return earliest
        return max(earliest, self.last_full_success + self.policy.full_period)

    def full_due(self, now: float) -> bool:
        return (
            self.needs_full
            or self.last_full_success is None
            or now >= self.last_full_success + self.policy.full_period
        )

    def next_canary_at(self) -> float | None:
        if self.last_full_success is None:
            return None
        since = max(self.last_full_success, self.last_canary_check or -math.inf)
        return since + self.policy.canary_interval

    def start_sync(self, *, full: bool) -> None:
        """The sync about to run takes every request made so far, and none made while it runs.

        Called when the changes are drained, before the sync is awaited: a change that
        arrives during the sync asks again and must get a sync of its own. (Clearing the
        request only when the sync ended lost such changes until the next full resync.)
        """
        self.requested = False
        if full:
            self.needs_full = False

    def record_sync(self, now: float, *, full: bool, ok: bool) -> None:
        self.last_attempt = now
        if ok:
            self.failures = 0
            if full:
                self.last_full_success = now
        else:
            self.failures += 1
            self.needs_full = True

    def record_canary(self, now: float, *, intact: bool) -> None:
        self.last_canary_check = now
        if not intact:
            self.request_full()
