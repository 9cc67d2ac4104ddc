"""The runtime half's sync loop: one worker per instance, woken by Docker events and the relist.

Level-triggered: a worker's pass reads the instance's containers, plans, acts, re-reads,
and reports status; what woke it (a Docker event, a probe result, a new spec, a timer) only
decides *when*. A read is kept for the next pass until the engine may have changed the
instance since (``instance_reads``): a pass that follows no change asks the engine nothing.
One worker per instance keeps the passes of one instance in order while instances sync in
parallel.

Nothing is removed before the first complete desired set arrived (``set_desired``): an
agent that restarts while the API server is away must not mistake "not yet known" for
"gone" and tear down every running instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Iterable

from loguru import logger

from kopflet.agent.runtime import metrics
from kopflet.agent.runtime.addresses import InstanceAddresses
from kopflet.agent.runtime.backoff import BackoffTable
from kopflet.agent.runtime.clock import Clock, SystemClock
from kopflet.agent.runtime.config import RuntimeConfig
from kopflet.agent.runtime.container_runtime import (
    ContainerRuntime,
    NetworkInfo,
    RuntimeOperationError,
    RuntimeUnavailable,
)
from kopflet.agent.runtime.environment import ContainerConfigError, ReferenceResolver
from kopflet.agent.runtime.image_pulls import PullKey
from kopflet.agent.runtime.instance_actions import (
    CrashKey,
    PlanContext,
    Waiting,
    plan_instance_actions,
)
from kopflet.agent.runtime.instance_reads import InstanceReads
from kopflet.agent.runtime.instance_status import StatusInputs, compute_instance_status
from kopflet.agent.runtime.labels import ContainerID
from kopflet.agent.runtime.probe_manager import ProbeManager
from kopflet.agent.runtime.probes import ProbeKey
from kopflet.agent.runtime.records import ObservedInstance, RunState, observed_instance
from kopflet.agent.runtime.relist import Relister
from kopflet.agent.runtime.reporting import InstanceRef, RuntimeReporter
from kopflet.agent.runtime.sync_instance import InstanceSyncer
from kopflet.agent.runtime.volumes import InstanceVolumes
from kopflet.api import UID, Instance, InstanceStatus

#: How long a worker waits before retrying a pass that failed on the engine or the API.
RETRY_SECONDS = 2.0
#: A pass that keeps failing on the engine is retried after 2 s, 4 s, ... at most this.
MAX_RETRY_SECONDS = 30.0
#: Reason of the Event that tells an Instance's owner its node's engine failed a pass.
FAILED_SYNC_REASON = "FailedSync"


def engine_retry_delay(failures: int) -> float:
    """Back-off after ``failures`` consecutive passes failed on the engine (1, 2, ...)."""
    return min(MAX_RETRY_SECONDS, RETRY_SECONDS * float(2 ** max(0, failures - 1)))


def _ref_from(observed: ObservedInstance) -> InstanceRef:
    labels = observed.all[0].labels
    return InstanceRef(
        uid=observed.uid, name=labels.instance_name, namespace=labels.instance_namespace
    )


class RuntimeEngine:
    def __init__(
        self,
        *,
        runtime: ContainerRuntime,
        config: RuntimeConfig,
        resolver: ReferenceResolver,
        reporter: RuntimeReporter,
        clock: Clock | None = None,
        on_engine_trouble: Callable[[], None] | None = None,
    ) -> None:
        self._runtime = runtime
        #: Called when the engine stops answering (a relist fails after one that did not,
        #: or the event stream breaks): the node's status should look at once, not at its
        #: next period, or an outage shorter than the period may never show.
        self._on_engine_trouble = on_engine_trouble
        self._config = config
        self._reporter = reporter
        self._resolver = resolver
        self._clock: Clock = clock or SystemClock()
        self._desired: dict[UID, Instance] = {}
        self._desired_known = asyncio.Event()
        self._network_ready = asyncio.Event()
        self._wakeups: dict[UID, asyncio.Event] = {}
        self._workers: dict[UID, asyncio.Task[None]] = {}
        #: The last status written per instance: the base of the next one, and what a new
        #: status is compared with (the watch may not have echoed the write yet).
        self._written: dict[UID, InstanceStatus] = {}
        self._messages: dict[UID, dict[ContainerID, str]] = {}
        self._crash_backoff: BackoffTable[CrashKey] = BackoffTable()
        self._image_backoff: BackoffTable[PullKey] = BackoffTable()
        self._relister = Relister(runtime, self._clock)
        self._reads = InstanceReads(max_age_seconds=config.resync_period_seconds)
        #: Which address each instance holds; learnt from the first relist before any
        #: worker may pick one.
        self._addresses = InstanceAddresses(config.instance_subnet, clock=self._clock.now)
        self._listed = asyncio.Event()
        # While the engine's event stream is open, events wake the syncs and the relist is
        # the backstop, slowed down (the kubelet's Evented PLEG); a broken stream or a
        # stream just (re)opened asks for a relist at once.
        self._events_open = False
        self._relist_now = asyncio.Event()
        self._probes = ProbeManager(
            runtime=runtime, clock=self._clock, on_result=self._on_probe_result
        )
        self._volumes = InstanceVolumes(
            config.volumes_dir,
            allow_host_path=config.allow_host_path,
            engine_sockets=(config.engine_socket,) if config.engine_socket else (),
        )
        self._syncer = InstanceSyncer(
            runtime=runtime,
            config=config,
            volumes=self._volumes,
            resolver=resolver,
            reporter=reporter,
            clock=self._clock,
            crash_backoff=self._crash_backoff,
            image_backoff=self._image_backoff,
            addresses=self._addresses,
        )
        self.network: NetworkInfo | None = None

    # -- fed by the agent's main loop ---------------------------------------------------

    def set_desired(self, instances: Iterable[Instance]) -> None:
        """The complete set of Instances bound to this node (a fresh list after a watch
        restart). Anything else the engine holds is an orphan and will be removed."""
        fresh = {i.metadata.uid: i for i in instances if i.metadata.uid is not None}
        for uid in self._desired.keys() | fresh.keys():
            if self._desired.get(uid) != fresh.get(uid):
                self.wake(uid)
        self._desired = fresh
        if not self._desired_known.is_set():
            self._desired_known.set()
            # What the engine holds and nobody wants: the relist finds it (workers, volumes).
            self._relist_now.set()
        for uid in fresh.keys() | self._relister.instance_uids():
            self._ensure_worker(uid)

    def put(self, instance: Instance) -> None:
        """One Instance was added or changed (spec, deletion, rebinding to another node).

        The watch's echo of our own writes (status, finalizer) changes nothing to do: it
        is kept without a pass, as the kubelet's pod config hands a status-only update to
        the pod manager without syncing the pod. Unless the status is not ours any more."""
        uid = instance.metadata.uid
        assert uid is not None
        before = self._desired.get(uid)
        self._desired[uid] = instance
        if (
            before is None
            or _what_a_pass_reads(before) != _what_a_pass_reads(instance)
            or self._reporter.overwritten(instance)
        ):
            self.wake(uid)
        self._ensure_worker(uid)

    def discard(self, uid: UID) -> None:
        """An Instance left this node's watch (deleted, or bound elsewhere)."""
        self._desired.pop(uid, None)
        self.wake(uid)

    def wake(self, uid: UID) -> None:
        # A late Docker event or relist change of an instance whose worker is gone must
        # not leave an Event behind for ever; its next worker (if any) syncs at once.
        if self._tracked(uid):
            self._wakeups.setdefault(uid, asyncio.Event()).set()

    def _tracked(self, uid: UID) -> bool:
        """The instance is wanted here or still has a worker: state about it may be kept."""
        return uid in self._workers or uid in self._desired

    def wake_all(self) -> None:
        """A ConfigMap or Secret changed: files and CreateContainerConfigErrors may too."""
        for uid in list(self._workers):
            self.wake(uid)

    # -- health ---------------------------------------------------------------------------

    def relist_age(self) -> float:
        return self._relister.age(self._clock.now())

    def healthy(self) -> bool:
        """False when the engine has not been listed for too long (a hung or gone engine)."""
        return self._relister.healthy(
            self._clock.now(), threshold_seconds=self._config.relist_threshold_seconds
        )

    # -- loops ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Runs until cancelled; the containers stay as they are when it stops."""
        try:
            await self._ensure_network()
            async with asyncio.TaskGroup() as group:
                group.create_task(self._relist_loop(), name="runtime-relist")
                group.create_task(self._event_loop(), name="runtime-events")
        finally:
            workers = list(self._workers.values())
            for task in workers:
                task.cancel()
            for task in workers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._workers.clear()
            await self._probes.close()

    async def wait_network_ready(self) -> None:
        """Until the instance network exists (made by :meth:`run`)."""
        await self._network_ready.wait()

    async def _ensure_network(self) -> None:
        config = self._config
        while self.network is None:
            try:
                self.network = await self._runtime.ensure_network(
                    name=config.network_name,
                    subnet=config.instance_subnet,
                    bridge_name=config.bridge_name,
                )
            except (RuntimeUnavailable, RuntimeOperationError) as exc:
                logger.warning("instance network not ready: {}", exc)
                await self._clock.sleep(RETRY_SECONDS)
        self._network_ready.set()

    async def _relist_loop(self) -> None:
        cleaned_volumes = False
        failed = False
        while True:
            self._relist_now.clear()
            started = self._clock.now()
            failed_before, failed = failed, False
            try:
                events = await self._relister.relist()
            except Exception as exc:  # the age grows and tells; the loop must go on
                logger.warning("relist failed: {}", exc)
                failed = True
                if not failed_before:
                    self._engine_trouble()
            else:
                listed_at = self._clock.now()
                metrics.RELIST_DURATION.observe(listed_at - started)
                self._learn_addresses()
                self._relisted({e.instance_uid for e in events}, at=listed_at)
                if self._desired_known.is_set():
                    for uid in self._relister.instance_uids():
                        self._ensure_worker(uid)
                    if not cleaned_volumes:
                        self._remove_orphan_volumes()
                        cleaned_volumes = True
            metrics.RELIST_AGE.set(min(self.relist_age(), 1e9))
            await self._wait(self._relist_now, self.relist_period(after_failure=failed))

    def relist_period(self, *, after_failure: bool = False) -> float:
        """How long until the next relist. A listing costs the engine ~0.14 ms of CPU per
        container: every second at the kubelet's pace while changes can be missed (no
        event stream, or the last relist failed), less often while the stream tells them."""
        config = self._config
        if self._events_open and not after_failure:
            # Well inside the health threshold, which a slow relist must not trip.
            slow = min(config.evented_relist_period_seconds, config.relist_threshold_seconds / 2)
            return max(config.relist_period_seconds, slow)
        return config.relist_period_seconds

    def _learn_addresses(self) -> None:
        """The addresses the listing shows held; those of instances with nothing left on
        the engine and no worker are free again (a worker may hold one it just picked)."""
        listed: set[UID] = set()
        for state in self._relister.records.values():
            listed.add(state.instance_uid)
            self._addresses.observe(state.instance_uid, state.instance_ip)
        for uid in self._addresses.uids() - listed - self._workers.keys():
            self._addresses.release(uid)
        self._listed.set()

    def _remove_orphan_volumes(self) -> None:
        keep = set(self._desired) | self._relister.instance_uids()
        for uid in self._volumes.known_uids() - keep:
            self._volumes.remove(uid)

    async def _event_loop(self) -> None:
        while True:
            try:
                events = self._runtime.events()
                # Open from here on (the stream subscribes on its first step, a failure to
                # raises right away); the relist this asks for finds what came before.
                self._set_events_open(True)
                async for event in events:
                    at = self._clock.now() if event.at is None else event.at
                    self._engine_changed(event.instance_uid, at=at)
            except Exception as exc:  # the relist is the backstop while events are away
                logger.warning("docker events interrupted: {}", exc)
            self._set_events_open(False)
            await self._clock.sleep(RETRY_SECONDS)

    def _engine_changed(self, uid: UID, *, at: float) -> None:
        """The engine changed one of the instance's containers, at ``at`` or before: a
        pass, unless the instance's last read came after (our own start, read back)."""
        if self._tracked(uid) and self._reads.changed(uid, at=at):
            self.wake(uid)

    def _relisted(self, changed: set[UID], *, at: float) -> None:
        """The relist that returned at ``at`` found these instances' containers changed."""
        states: dict[UID, dict[ContainerID, RunState]] = {uid: {} for uid in changed}
        for state in self._relister.records.values():
            if state.instance_uid in states:
                states[state.instance_uid][state.id] = state.state
        for uid, listed in states.items():
            if self._tracked(uid) and self._reads.listed(uid, listed, at=at):
                self.wake(uid)

    def _set_events_open(self, open_: bool) -> None:
        if open_ != self._events_open:
            self._events_open = open_
            self._relist_now.set()
            if not open_:
                self._engine_trouble()

    def _engine_trouble(self) -> None:
        if self._on_engine_trouble is not None:
            self._on_engine_trouble()

    def _ensure_worker(self, uid: UID) -> None:
        if not self._desired_known.is_set():
            return
        task = self._workers.get(uid)
        if task is None or task.done():
            self._workers[uid] = asyncio.create_task(self._worker(uid), name=f"instance-{uid}")
            self.wake(uid)

    async def _worker(self, uid: UID) -> None:
        wake = self._wakeups.setdefault(uid, asyncio.Event())
        # A sandbox needs the instance network; creating one before it exists would fail,
        # or worse, land on a stale network of another subnet. And no address is picked
        # before the listing has told which are held.
        await self._network_ready.wait()
        await self._listed.wait()
        failures = 0
        while True:
            wake.clear()
            started = self._clock.now()
            try:
                done, wake_at = await self._sync(uid)
                failures = 0
            except (RuntimeUnavailable, RuntimeOperationError, OSError) as exc:
                # A busy, full or frozen engine is temporary: back off, and tell the
                # Instance's owner, who otherwise sees nothing but a pending Instance.
                failures += 1
                delay = engine_retry_delay(failures)
                logger.warning(
                    "sync of instance {} failed, retrying in {:.0f}s: {}", uid, delay, exc
                )
                metrics.SYNC_ERRORS.inc()
                self._report_failed_sync(uid, exc)
                done, wake_at = False, self._clock.now() + delay
            except Exception:
                # A bug must not leave an instance without its worker: log it, retry later.
                logger.exception("sync of instance {} crashed, retrying", uid)
                metrics.SYNC_ERRORS.inc()
                done, wake_at = False, self._clock.now() + RETRY_SECONDS
            finally:
                metrics.SYNC_DURATION.observe(max(0.0, self._clock.now() - started))
            if done and uid not in self._desired:
                self._workers.pop(uid, None)
                self._wakeups.pop(uid, None)
                self._reads.forget(uid)
                return
            timeout = self._config.resync_period_seconds
            if wake_at is not None:
                timeout = max(0.0, min(timeout, wake_at - self._clock.now()))
            await self._wait(wake, timeout)

    def _report_failed_sync(self, uid: UID, error: Exception) -> None:
        desired = self._desired.get(uid)
        if desired is None:
            return  # being torn down: nobody is left to tell
        self._reporter.event(
            InstanceRef.of(desired),
            type="Warning",
            reason=FAILED_SYNC_REASON,
            message=f"error syncing instance, retrying with back-off: {error}",
        )

    async def _wait(self, wake: asyncio.Event, timeout: float) -> None:
        waiter = asyncio.ensure_future(wake.wait())
        sleeper = asyncio.ensure_future(self._clock.sleep(timeout))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            sleeper.cancel()

    # -- one pass -------------------------------------------------------------------------

    async def _sync(self, uid: UID) -> tuple[bool, float | None]:
        """One pass; returns (nothing of the instance is left, when to sync again)."""
        desired = self._desired.get(uid)
        observed = await self._read(uid)
        if desired is None and not observed.all:
            self._forget(uid)
            return True, None
        self._addresses.observe(uid, observed.assigned_ip)
        ref = InstanceRef.of(desired) if desired is not None else _ref_from(observed)
        now = self._clock.now()
        actions = plan_instance_actions(
            desired,
            observed,
            PlanContext(
                node=self._config.node_name,
                now=now,
                policy=self._config.crash_backoff,
                backoff=self._crash_backoff.get,
                verdicts=self._probes.verdicts(uid),
            ),
        )
        for backing_off in actions.waiting:
            self._reporter.event(
                ref,
                type="Warning",
                reason="BackOff",
                message=f"Back-off restarting failed container {backing_off.name}: "
                f"{backing_off.message}",
            )
        if not actions.is_empty:
            self._reads.acting(uid)
        result = await self._syncer.execute(desired, observed, actions, ref)
        restarts = sum(1 for s in actions.start if s.restart_count > 0)
        if restarts:
            metrics.CONTAINER_RESTARTS.inc(restarts)
        if not actions.is_empty:
            observed = await self._read(uid)
        wake_at = min((t for t in (actions.wake_at, result.wake_at) if t is not None), default=None)
        if result.changed or result.failed:
            # Confirm what was done with a fresh pass at once (a removal wakes nothing
            # else), or soon if a step failed, so that a broken engine is not hammered.
            again = now + (RETRY_SECONDS if result.failed else 0.0)
            wake_at = again if wake_at is None else min(wake_at, again)
        mine = desired is not None and desired.spec.node_name == self._config.node_name
        if actions.cleaned_up:
            self._forget(uid)
            if desired is not None and mine:
                await self._reporter.instance_cleaned_up(desired)
            return desired is None or not mine, wake_at
        if desired is not None and mine:
            if desired.metadata.deletion_timestamp is None and not actions.start:
                self._refresh_volumes(desired)
            self._probes.sync(desired, observed)
            await self._collect_messages(observed)
            waiting = {w.name: w for w in actions.waiting} | result.waiting
            if not await self._report(desired, observed, waiting):
                wake_at = min(wake_at or now + RETRY_SECONDS, now + RETRY_SECONDS)
        return False, wake_at

    async def _read(self, uid: UID) -> ObservedInstance:
        """The instance's containers: the last read if still good, else the engine's."""
        asked_at = self._clock.now()
        records = self._reads.fresh(uid, asked_at)
        if records is None:
            records = await self._runtime.list_containers(uid)
            self._reads.store(uid, records, at=asked_at)
        return observed_instance(uid, records)

    def _refresh_volumes(self, instance: Instance) -> None:
        # ConfigMap and Secret files follow their objects while the containers run; an
        # object that vanished keeps its last files (the kubelet does the same).
        with contextlib.suppress(ContainerConfigError, OSError):
            self._volumes.prepare(instance, self._resolver)

    async def _collect_messages(self, observed: ObservedInstance) -> None:
        known = self._messages.setdefault(observed.uid, {})
        for record in observed.containers:
            if record.state is RunState.EXITED and record.id not in known:
                known[record.id] = await self._runtime.logs_tail(
                    record.id, lines=self._config.termination_message_lines
                )
        for cid in [c for c in known if all(r.id != c for r in observed.containers)]:
            del known[cid]

    async def _report(
        self, instance: Instance, observed: ObservedInstance, waiting: dict[str, Waiting]
    ) -> bool:
        """Writes the status if it changed; False if the write failed (retry soon)."""
        uid = observed.uid
        previous = self._written.get(uid) or instance.status
        status = compute_instance_status(
            instance,
            observed,
            StatusInputs(
                host_ip=self._config.host_ip,
                now=self._clock.now(),
                waiting=waiting,
                started=self._probes.started,
                ready=self._probes.ready,
                messages=self._messages.get(uid, {}),
            ),
            previous=previous,
        )
        if (
            previous is not None
            and status.to_dict() == previous.to_dict()
            and not self._reporter.overwritten(instance)
        ):
            return True
        try:
            await self._reporter.instance_status(instance, status)
        except Exception as exc:  # the API is away: the containers carry on regardless
            logger.warning("status of {} not written: {}", uid, exc)
            return False
        self._written[uid] = status
        return True

    def _forget(self, uid: UID) -> None:
        # The read stays while the worker does: it shows nothing left, and the engine's
        # events of the last stop and removal, logged before it, need no pass to read again.
        self._addresses.release(uid)
        self._volumes.remove(uid)
        self._probes.forget(uid)
        self._crash_backoff.forget(lambda key: key[0] == uid)
        self._image_backoff.forget(lambda key: key[0] == uid)
        self._messages.pop(uid, None)
        self._written.pop(uid, None)

    def _on_probe_result(self, key: ProbeKey, ok: bool, message: str) -> None:
        metrics.PROBE_RESULTS.labels(
            probe_type=key.probe_type.value, result="success" if ok else "failure"
        ).inc()
        instance = self._desired.get(key.instance_uid)
        if not ok and instance is not None:
            self._reporter.event(
                InstanceRef.of(instance),
                type="Warning",
                reason="Unhealthy",
                message=f"{key.probe_type.value} probe failed: {message}".rstrip(": "),
            )
        self.wake(key.instance_uid)


def _what_a_pass_reads(instance: Instance) -> tuple[object, ...]:
    """An Instance without what only its writers' echoes change (status, resourceVersion,
    finalizers): equal for two versions, a pass over either would do the same."""
    meta = dataclasses.replace(instance.metadata, resource_version=None, finalizers=None)
    return (meta, instance.spec)
