"""Act: perform one instance's planned actions in numbered steps, recording a result per step.

The kubelet's SyncPod order: (1) stop app containers, (2) stop sandboxes, (3) remove what
was planned away, (4) create the sandbox, (5) for each container to start: image, config,
create, start. Stops run concurrently (each waits out its own grace period); starts run
in spec order, each create-and-start waiting for one of the node's parallel-start slots
(:mod:`start_gate`). A failed step never raises: it is recorded, the container it concerns
gets a waiting reason for the status, and the next pass tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from kopflet.agent.runtime.addresses import InstanceAddresses, SubnetExhausted
from kopflet.agent.runtime.backoff import BackoffTable, next_entry
from kopflet.agent.runtime.clock import Clock
from kopflet.agent.runtime.config import RuntimeConfig
from kopflet.agent.runtime.container_config import ContainerPolicy, container_request
from kopflet.agent.runtime.container_runtime import (
    AddressInUse,
    ContainerRequest,
    ContainerRuntime,
    ImagePullError,
    NetworkAttachment,
    PortBinding,
    RuntimeOperationError,
    SandboxRequest,
)
from kopflet.agent.runtime.environment import (
    CREATE_CONTAINER_CONFIG_ERROR,
    ContainerConfigError,
    InstanceFacts,
    ReferenceResolver,
    resolve_env,
)
from kopflet.agent.runtime.image_pulls import (
    ERR_IMAGE_PULL,
    ImageStep,
    PullKey,
    decide_image,
)
from kopflet.agent.runtime.instance_actions import (
    ContainerStart,
    ContainerStop,
    CrashKey,
    InstanceActions,
    SandboxCreate,
    Waiting,
    expected_spec_hash,
)
from kopflet.agent.runtime.labels import ContainerLabels, ContainerRole
from kopflet.agent.runtime.records import ContainerRecord, ObservedInstance
from kopflet.agent.runtime.reporting import EventType, InstanceRef, RuntimeReporter
from kopflet.agent.runtime.start_gate import StartGate
from kopflet.agent.runtime.volumes import InstanceVolumes
from kopflet.api import Container, Instance
from kopflet.api.instance import DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS

CREATE_CONTAINER_ERROR = "CreateContainerError"
#: A sandbox that could not be created is retried this soon (not only at the next resync).
SANDBOX_RETRY_SECONDS = 2.0


@dataclass(frozen=True, kw_only=True)
class StepResult:
    step: int
    action: str
    target: str
    ok: bool
    message: str = ""


@dataclass(kw_only=True)
class SyncResult:
    steps: list[StepResult] = field(default_factory=list)
    #: Why a container did not start this pass, for its status.
    waiting: dict[str, Waiting] = field(default_factory=dict)
    wake_at: float | None = None
    started: int = 0

    def record(self, step: int, action: str, target: str, ok: bool, message: str = "") -> None:
        self.steps.append(
            StepResult(step=step, action=action, target=target, ok=ok, message=message)
        )

    def wake_no_later_than(self, at: float | None) -> None:
        if at is not None and (self.wake_at is None or at < self.wake_at):
            self.wake_at = at

    @property
    def failed(self) -> bool:
        return any(not s.ok for s in self.steps)

    @property
    def changed(self) -> bool:
        """Something on the engine changed: worth a confirming pass right away."""
        return any(s.ok and s.action in _MUTATIONS for s in self.steps)


_MUTATIONS = frozenset({"stop", "remove", "create-sandbox", "start"})


class InstanceSyncer:
    """Executes :class:`InstanceActions` against the runtime; holds no per-pass state."""

    def __init__(
        self,
        *,
        runtime: ContainerRuntime,
        config: RuntimeConfig,
        volumes: InstanceVolumes,
        resolver: ReferenceResolver,
        reporter: RuntimeReporter,
        clock: Clock,
        crash_backoff: BackoffTable[CrashKey],
        image_backoff: BackoffTable[PullKey],
        addresses: InstanceAddresses,
    ) -> None:
        self._runtime = runtime
        self._addresses = addresses
        self._config = config
        self._volumes = volumes
        self._resolver = resolver
        self._reporter = reporter
        self._clock = clock
        self._crash_backoff = crash_backoff
        self._image_backoff = image_backoff
        self._starts = StartGate(config.max_parallel_starts)
        #: The sandbox image was there at the last sandbox create: not looked up again until
        #: a create fails.
        self._sandbox_image_present = False

    def _event(self, ref: InstanceRef, type_: EventType, reason: str, message: str) -> None:
        self._reporter.event(ref, type=type_, reason=reason, message=message)

    async def execute(
        self,
        instance: Instance | None,
        observed: ObservedInstance,
        actions: InstanceActions,
        ref: InstanceRef,
    ) -> SyncResult:
        result = SyncResult()
        app_stops = [s for s in actions.stop if not s.sandbox]
        sandbox_stops = [s for s in actions.stop if s.sandbox]
        await asyncio.gather(*(self._stop(1, s, ref, result) for s in app_stops))
        await asyncio.gather(*(self._stop(2, s, ref, result) for s in sandbox_stops))
        for container_id in actions.remove:
            try:
                await self._runtime.remove_container(container_id)
                result.record(3, "remove", container_id[:12], True)
            except RuntimeOperationError as exc:
                result.record(3, "remove", container_id[:12], False, str(exc))
        if instance is None or not (actions.create_sandbox or actions.start):
            return result
        sandbox: ContainerRecord | None = None
        if actions.without_sandbox:
            ip = self._address(ref, result)
        else:
            sandbox = observed.latest_sandbox
            if actions.create_sandbox is not None:
                sandbox = await self._create_sandbox(instance, actions.create_sandbox, ref, result)
            ip = sandbox.ip if sandbox is not None else None
        if not ip:
            for start in actions.start:
                result.waiting[start.name] = Waiting(
                    name=start.name, reason="ContainerCreating", message="sandbox not ready"
                )
            return result
        try:
            paths = self._volumes.prepare(instance, self._resolver)
        except (ContainerConfigError, OSError) as exc:
            for start in actions.start:
                self._config_error(start.name, str(exc), ref, result)
            return result
        for start in actions.start:
            await self._start(instance, start, sandbox, ip, paths, ref, result)
        return result

    def _address(self, ref: InstanceRef, result: SyncResult) -> str | None:
        """The instance's address on the node's network, picked now if it has none."""
        try:
            return self._addresses.address_for(ref.uid)
        except SubnetExhausted as exc:
            result.record(4, "address", ref.name, False, str(exc))
            result.wake_no_later_than(self._clock.now() + SANDBOX_RETRY_SECONDS)
            self._event(ref, "Warning", "FailedCreateSandbox", f"Failed to create sandbox: {exc}")
            return None

    def _address_refused(
        self, ref: InstanceRef, ip: str, exc: AddressInUse, result: SyncResult
    ) -> None:
        # The engine may not have let go of the address of a container stopped a moment ago:
        # the next pass, soon, asks again; refused again, the instance gets another one.
        given_up = self._addresses.refused(ref.uid, ip)
        result.wake_no_later_than(self._clock.now() + SANDBOX_RETRY_SECONDS)
        then = "another address follows" if given_up else "retrying"
        self._event(ref, "Warning", "FailedCreateSandbox", f"Address {ip} is taken, {then}: {exc}")

    async def _stop(
        self, step: int, stop: ContainerStop, ref: InstanceRef, result: SyncResult
    ) -> None:
        what = stop.name or "sandbox"
        if not stop.sandbox:
            self._event(ref, "Normal", "Killing", f"Stopping container {what}: {stop.message}")
        try:
            await self._runtime.stop_container(stop.id, grace_seconds=stop.grace_seconds)
            result.record(step, "stop", what, True, stop.reason.value)
        except RuntimeOperationError as exc:
            result.record(step, "stop", what, False, str(exc))

    async def _create_sandbox(
        self, instance: Instance, create: SandboxCreate, ref: InstanceRef, result: SyncResult
    ) -> ContainerRecord | None:
        config = self._config
        ip = self._address(ref, result)
        if ip is None:
            return None
        try:
            if not self._sandbox_image_present:
                if await self._runtime.image_info(config.sandbox_image) is None:
                    await self._runtime.pull_image(config.sandbox_image)
                self._sandbox_image_present = True
            async with self._starts.slot():
                container_id = await self._runtime.create_sandbox(
                    SandboxRequest(
                        labels=self._labels(instance, ContainerRole.SANDBOX, "", create, ip=ip),
                        image=config.sandbox_image,
                        command=config.sandbox_command,
                        network=config.network_name,
                        hostname=instance.spec.hostname or ref.name,
                        port_bindings=_host_ports(instance),
                        ip=ip,
                    )
                )
        except AddressInUse as exc:
            result.record(4, "create-sandbox", ref.name, False, str(exc))
            self._address_refused(ref, ip, exc, result)
            return None
        except RuntimeOperationError as exc:
            self._sandbox_image_present = False
            result.record(4, "create-sandbox", ref.name, False, str(exc))
            result.wake_no_later_than(self._clock.now() + SANDBOX_RETRY_SECONDS)
            self._event(ref, "Warning", "FailedCreateSandbox", f"Failed to create sandbox: {exc}")
            return None
        self._addresses.accepted(ref.uid)
        result.record(4, "create-sandbox", ref.name, True)
        return await self._runtime.container_record(container_id)

    def _labels(
        self,
        instance: Instance,
        role: ContainerRole,
        name: str,
        what: SandboxCreate | ContainerStart,
        spec_hash: str = "",
        *,
        ip: str,
    ) -> ContainerLabels:
        meta, spec = instance.metadata, instance.spec
        assert meta.uid is not None
        grace = spec.termination_grace_period_seconds
        return ContainerLabels(
            role=role,
            node=self._config.node_name,
            instance_uid=meta.uid,
            instance_name=meta.name or "",
            instance_namespace=meta.namespace or "default",
            container_name=name,
            spec_hash=what.spec_hash if isinstance(what, SandboxCreate) else spec_hash,
            restart_count=what.restart_count,
            grace_period_seconds=DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS
            if grace is None
            else grace,
            instance_ip=ip,
        )

    def _config_error(self, name: str, message: str, ref: InstanceRef, result: SyncResult) -> None:
        result.record(5, "configure", name, False, message)
        result.waiting[name] = Waiting(
            name=name, reason=CREATE_CONTAINER_CONFIG_ERROR, message=message
        )
        self._event(ref, "Warning", "Failed", f"Error: {message}")

    async def _ensure_image(
        self, container: Container, ref: InstanceRef, result: SyncResult
    ) -> str | None:
        """The image's configured user once it is present; ``None`` if the start must wait."""
        image = container.image
        key: PullKey = (ref.uid, image)
        now = self._clock.now()
        info = await self._runtime.image_info(image)
        decision = decide_image(
            image=image,
            policy=container.effective_image_pull_policy,
            present=info is not None,
            backoff=self._image_backoff.get(key),
            now=now,
        )
        if decision.step is ImageStep.USE_LOCAL:
            assert info is not None
            return info.user
        if decision.step is not ImageStep.PULL:
            # Waiting out a back-off is the plan, not a failure; refusing to pull is one.
            refused = decision.step is ImageStep.REFUSE
            result.record(5, "image", container.name, not refused, decision.message)
            result.waiting[container.name] = Waiting(
                name=container.name, reason=decision.reason, message=decision.message
            )
            result.wake_no_later_than(decision.retry_at)
            kind: EventType = "Warning" if decision.step is ImageStep.REFUSE else "Normal"
            reason = "ErrImageNeverPull" if decision.step is ImageStep.REFUSE else "BackOff"
            self._event(ref, kind, reason, decision.message)
            return None
        self._event(ref, "Normal", "Pulling", f'Pulling image "{image}"')
        try:
            pulled = await self._runtime.pull_image(image)
        except ImagePullError as exc:
            entry = next_entry(
                self._image_backoff.get(key), self._config.image_backoff, failed_at=now
            )
            self._image_backoff.put(key, entry)
            message = f'Failed to pull image "{image}": {exc}'
            result.record(5, "pull", container.name, False, message)
            result.waiting[container.name] = Waiting(
                name=container.name, reason=ERR_IMAGE_PULL, message=message
            )
            result.wake_no_later_than(now + entry.delay)
            self._event(ref, "Warning", "Failed", message)
            return None
        self._image_backoff.forget(lambda k: k == key)
        result.record(5, "pull", container.name, True)
        self._event(ref, "Normal", "Pulled", f'Successfully pulled image "{image}"')
        return pulled.user

    async def _start(
        self,
        instance: Instance,
        start: ContainerStart,
        sandbox: ContainerRecord | None,
        ip: str,
        paths: dict[str, str],
        ref: InstanceRef,
        result: SyncResult,
    ) -> None:
        container = instance.spec.container_named(start.name)
        assert container is not None
        image_user = await self._ensure_image(container, ref, result)
        if image_user is None:
            return
        facts = InstanceFacts(
            name=ref.name,
            namespace=ref.namespace,
            uid=ref.uid,
            node_name=self._config.node_name,
            instance_ip=ip,
            host_ip=self._config.host_ip,
            labels=instance.metadata.labels or {},
            annotations=instance.metadata.annotations or {},
        )
        without_sandbox = sandbox is None
        labels = self._labels(
            instance,
            ContainerRole.APP,
            start.name,
            start,
            expected_spec_hash(instance, start.name, without_sandbox=without_sandbox),
            ip=ip,
        )
        try:
            env = resolve_env(container, resolver=self._resolver, facts=facts)
            request = container_request(
                instance=instance,
                container=container,
                labels=labels,
                sandbox_id=sandbox.id if sandbox is not None else None,
                attachment=None
                if sandbox is not None
                else NetworkAttachment(
                    network=self._config.network_name,
                    ip=ip,
                    hostname=instance.spec.hostname or ref.name,
                    port_bindings=_host_ports(instance),
                ),
                env=env,
                volume_paths=paths,
                policy=ContainerPolicy(
                    allow_privileged=self._config.allow_privileged,
                    allowed_capabilities=self._config.allowed_capabilities,
                ),
                image_user=image_user,
            )
        except ContainerConfigError as exc:
            self._config_error(start.name, str(exc), ref, result)
            return
        async with self._starts.slot():
            await self._create_and_start(request, start, sandbox, ip, ref, result)

    async def _create_and_start(
        self,
        request: ContainerRequest,
        start: ContainerStart,
        sandbox: ContainerRecord | None,
        ip: str,
        ref: InstanceRef,
        result: SyncResult,
    ) -> None:
        try:
            container_id = await self._runtime.create_container(request)
        except RuntimeOperationError as exc:
            result.record(5, "create", start.name, False, str(exc))
            result.waiting[start.name] = Waiting(
                name=start.name, reason=CREATE_CONTAINER_ERROR, message=str(exc)
            )
            self._event(ref, "Warning", "Failed", f"Error: {exc}")
            return
        self._event(ref, "Normal", "Created", f"Created container {start.name}")
        # Armed before the start: a start the engine refuses is a failure to back off from.
        if start.backoff is not None:
            self._crash_backoff.put(*start.backoff)
        try:
            await self._runtime.start_container(container_id)
        except AddressInUse as exc:
            # Never ran: not a failure of the container's, so no restart is spent on it.
            result.record(5, "start", start.name, False, str(exc))
            self._address_refused(ref, ip, exc, result)
            with contextlib.suppress(RuntimeOperationError):
                await self._runtime.remove_container(container_id)
            return
        except RuntimeOperationError as exc:
            result.record(5, "start", start.name, False, str(exc))
            self._event(ref, "Warning", "Failed", f"Error: {exc}")
            return
        if sandbox is None:
            self._addresses.accepted(ref.uid)
        result.record(5, "start", start.name, True, start.message)
        result.started += 1
        self._event(ref, "Normal", "Started", f"Started container {start.name}")


def _host_ports(instance: Instance) -> tuple[PortBinding, ...]:
    return tuple(
        PortBinding(
            container_port=p.container_port,
            host_port=p.host_port,
            protocol=(p.protocol or "TCP").lower(),
            host_ip=p.host_ip or "",
        )
        for c in instance.spec.containers
        for p in c.ports or ()
        if p.host_port
    )
