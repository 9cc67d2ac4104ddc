"""Leader election with a ``coordination.k8s.io`` Lease, as client-go's leaderelection does.

The replica holding the Lease runs the controller; the others wait. The holder renews every
``retry_period``; a replica that cannot renew within ``renew_deadline`` gives up (the process
stops, so it cannot act on a stale belief that it leads). A waiting replica takes the Lease
once its record has not changed for ``lease_duration`` *on the waiter's own clock* — never by
comparing the renew time inside the Lease with its own clock, since the two may disagree. A
leader that stops cleanly releases the Lease, so the next one takes over at once.

Runs in a thread of its own with the kubernetes client: renewals go on even while the event
loop is busy, and a stuck loop shows up in the health endpoint instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import kubernetes
from kubernetes.client.exceptions import ApiException
from loguru import logger

Action = Literal["create", "acquire", "renew", "wait"]


@dataclass(frozen=True)
class LeaseRecord:
    holder: str | None
    lease_duration_seconds: int
    resource_version: str
    transitions: int = 0


def decide(record: LeaseRecord | None, *, identity: str, unchanged_for: float) -> Action:
    """What a replica does about the Lease, given how long it has seen the record unchanged."""
    if record is None:
        return "create"
    if record.holder == identity:
        return "renew"
    if not record.holder or unchanged_for >= record.lease_duration_seconds:
        return "acquire"
    return "wait"


@dataclass(frozen=True)
class ElectionTiming:
    # A dead leader is replaced after lease_duration + at most one retry_period (~10 s), well
    # inside the 15 s the issue allows, while a leader survives a few lost renewals.
    lease_duration: float = 8.0
    renew_deadline: float = 6.0
    retry_period: float = 1.0


class LeaderElector:
    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        timing: ElectionTiming = ElectionTiming(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = kubernetes.client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing
        self._clock = clock
        self._observed: tuple[str, float] | None = None  # (resourceVersion, first seen)
        self._last_renewal = 0.0
        #: Holder of the Lease as last read (None: unheld or not read yet).
        self.holder: str | None = None

    def _read(self) -> tuple[kubernetes.client.V1Lease | None, LeaseRecord | None]:
        try:
            lease = self._api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as error:
            if error.status == 404:
                return None, None
            raise
        spec = lease.spec or kubernetes.client.V1LeaseSpec()
        record = LeaseRecord(
            holder=spec.holder_identity or None,
            lease_duration_seconds=int(spec.lease_duration_seconds or self.timing.lease_duration),
            resource_version=str(lease.metadata.resource_version if lease.metadata else ""),
            transitions=int(spec.lease_transitions or 0),
        )
        self.holder = record.holder
        now = self._clock()
        if self._observed is None or self._observed[0] != record.resource_version:
            self._observed = (record.resource_version, now)
        return lease, record

    def _spec(self, *, transitions: int, acquired: bool) -> kubernetes.client.V1LeaseSpec:
        now = datetime.now(UTC)
        return kubernetes.client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=int(self.timing.lease_duration),
            acquire_time=now if acquired else None,
            renew_time=now,
            lease_transitions=transitions,
        )

    def try_acquire_or_renew(self) -> bool:
        """One step of the protocol; True while this replica holds the Lease."""
        lease, record = self._read()
        assert self._observed is not None or record is None
        unchanged_for = self._clock() - self._observed[1] if self._observed else 0.0
        action = decide(record, identity=self.identity, unchanged_for=unchanged_for)
        try:
            if action == "create":
                body = kubernetes.client.V1Lease(
                    metadata=kubernetes.client.V1ObjectMeta(
                        name=self.name, namespace=self.namespace
                    ),
                    spec=self._spec(transitions=0, acquired=True),
                )
                self._api.create_namespaced_lease(self.namespace, body)
            elif action in ("acquire", "renew"):
                assert lease is not None and record is not None
                acquired = action == "acquire"
                spec = self._spec(
                    transitions=record.transitions + (1 if acquired else 0), acquired=acquired
                )
                if not acquired and lease.spec is not None:
                    spec.acquire_time = lease.spec.acquire_time
                lease.spec = spec
                # replace carries the resourceVersion read above: a racing writer gets a 409.
                self._api.replace_namespaced_lease(self.name, self.namespace, lease)
            else:
                return False
        except ApiException as error:
            if error.status in (409, 422):
                return False
            raise
        self._last_renewal = self._clock()
        if action != "renew":
            logger.info(
                "leader election: {} now holds {}/{}", self.identity, self.namespace, self.name
            )
        return True

    def acquire(self, stop: threading.Event) -> bool:
        """Block until this replica leads (True) or ``stop`` is set (False)."""
        logger.info(
            "leader election: {} waiting for {}/{}", self.identity, self.namespace, self.name
        )
        while not stop.is_set():
            try:
                if self.try_acquire_or_renew():
                    return True
            except Exception as error:  # the API server may be briefly away: keep trying
                logger.warning("leader election: {}", error)
            stop.wait(self.timing.retry_period)
        return False

    def keep_renewing(self, stop: threading.Event, on_lost: Callable[[], None]) -> threading.Thread:
        def renew() -> None:
            while not stop.wait(self.timing.retry_period):
                try:
                    if self.try_acquire_or_renew():
                        continue
                except Exception as error:
                    logger.warning("leader election: renewal failed: {}", error)
                overdue = self._clock() - self._last_renewal > self.timing.renew_deadline
                lost = overdue or (self.holder is not None and self.holder != self.identity)
                if lost:
                    logger.error("leader election: lost {}/{}", self.namespace, self.name)
                    on_lost()
                    return

        thread = threading.Thread(target=renew, name="leader-election", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        """Hand the Lease over at once on a clean stop (only if we still hold it)."""
        try:
            lease, record = self._read()
            if lease is None or record is None or record.holder != self.identity:
                return
            assert lease.spec is not None
            lease.spec.holder_identity = ""
            lease.spec.lease_duration_seconds = 1
            lease.spec.renew_time = datetime.now(UTC)
            self._api.replace_namespaced_lease(self.name, self.namespace, lease)
            logger.info("leader election: released {}/{}", self.namespace, self.name)
        except Exception as error:
            logger.warning("leader election: release failed: {}", error)
