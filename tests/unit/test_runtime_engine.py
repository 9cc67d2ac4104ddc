"""The engine's loops against the in-memory runtime: adoption, orphans, restarts, status."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from kopflet.agent.runtime.backoff import BackoffPolicy
from kopflet.agent.runtime.config import RuntimeConfig
from kopflet.agent.runtime.container_runtime import (
    ContainerRequest,
    ExecResult,
    ImageInfo,
    SandboxRequest,
)
from kopflet.agent.runtime.engine import RuntimeEngine
from kopflet.agent.runtime.fake_runtime import FakeRuntime
from kopflet.agent.runtime.labels import ContainerLabels, ContainerRole
from kopflet.agent.runtime.records import ContainerState
from kopflet.agent.runtime.reporting import EventType, InstanceRef
from kopflet.agent.runtime.spec_hash import container_spec_hash, sandbox_spec_hash
from kopflet.api import UID, Instance, InstanceStatus, Timestamp

pytestmark = pytest.mark.unit

IMAGE = "kopflet/busybox:test"
SANDBOX_IMAGE = "kopflet/pause:test"


class Objects:
    def __init__(self) -> None:
        self.config_maps: dict[str, dict[str, bytes]] = {}

    def config_map(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        return self.config_maps.get(f"{namespace}/{name}")

    def secret(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        return None


class Reporter:
    def __init__(self) -> None:
        self.statuses: dict[str, list[InstanceStatus]] = {}
        self.events: list[tuple[str, str, str]] = []
        self.cleaned: list[str] = []
        #: What ``overwritten`` answers: the watched status is not the one written.
        self.stale = False

    async def instance_status(self, instance: Instance, status: InstanceStatus) -> None:
        self.statuses.setdefault(instance.metadata.name or "", []).append(status)

    def overwritten(self, instance: Instance) -> bool:
        return self.stale

    async def instance_cleaned_up(self, instance: Instance) -> None:
        self.cleaned.append(instance.metadata.name or "")

    def event(self, ref: InstanceRef, *, type: EventType, reason: str, message: str) -> None:
        self.events.append((ref.name, reason, message))

    def last(self, name: str) -> InstanceStatus | None:
        found = self.statuses.get(name)
        return found[-1] if found else None


def make_instance(name: str, *, uid: str | None = None, **spec: Any) -> Instance:
    body: dict[str, Any] = {
        "nodeName": "node-a",
        "terminationGracePeriodSeconds": 3,
        "containers": [{"name": "main", "image": IMAGE}],
    }
    body.update(spec)
    return Instance.from_dict(
        {
            "metadata": {"name": name, "namespace": "default", "uid": uid or f"uid-{name}"},
            "spec": body,
        }
    )


def being_deleted(instance: Instance) -> Instance:
    """The Instance as the watch shows it once deleted, while the agent's finalizer holds it."""
    meta = dataclasses.replace(
        instance.metadata, deletion_timestamp=Timestamp("2026-01-01T00:00:00Z")
    )
    return dataclasses.replace(instance, metadata=meta)


class Harness:
    def __init__(self, tmp_path: Path, runtime: FakeRuntime | None = None, **config: Any) -> None:
        self.runtime = runtime or FakeRuntime(now=time.time, images=(IMAGE, SANDBOX_IMAGE))
        self.reporter = Reporter()
        self.objects = Objects()
        self.config = RuntimeConfig(
            node_name="node-a",
            instance_subnet="10.244.1.0/24",
            sandbox_image=SANDBOX_IMAGE,
            volumes_dir=tmp_path / "volumes",
            host_ip="192.168.50.2",
            crash_backoff=BackoffPolicy(initial_seconds=0.4, max_seconds=2, reset_after_seconds=60),
            image_backoff=BackoffPolicy(initial_seconds=0.4, max_seconds=2),
            relist_period_seconds=0.05,
            resync_period_seconds=0.2,
            relist_threshold_seconds=0.5,
        )
        self.config = dataclasses.replace(self.config, **config)
        self.engine = RuntimeEngine(
            runtime=self.runtime, config=self.config, resolver=self.objects, reporter=self.reporter
        )

    async def run(self, scenario: Callable[[Harness], Awaitable[None]]) -> None:
        task = asyncio.create_task(self.engine.run())
        try:
            await asyncio.wait_for(scenario(self), timeout=10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def until(self, what: Callable[[], bool], *, seconds: float = 5.0) -> None:
        deadline = time.monotonic() + seconds
        while not what():
            assert time.monotonic() < deadline, "condition not reached in time"
            await asyncio.sleep(0.02)

    @staticmethod
    def passes() -> float:
        """Sync passes run so far, by any engine of this process (compare before/after)."""
        value = REGISTRY.get_sample_value("kopflet_runtime_instance_sync_duration_seconds_count")
        return value or 0.0

    def phase(self, name: str) -> str | None:
        status = self.reporter.last(name)
        return status.phase if status else None

    def reason(self, name: str) -> str | None:
        status = self.reporter.last(name)
        return status.reason if status else None


TWO_CONTAINERS = [
    {"name": "main", "image": IMAGE},
    {"name": "side", "image": IMAGE},
]


def test_instance_of_two_containers_starts_in_its_sandbox_and_reports_running(
    tmp_path: Path,
) -> None:
    async def scenario(h: Harness) -> None:
        h.engine.set_desired([make_instance("web", containers=TWO_CONTAINERS)])
        await h.until(lambda: h.phase("web") == "Running")
        status = h.reporter.last("web")
        assert status is not None and status.instance_ip == "10.244.1.2"
        [main] = h.runtime.running("main")
        [side] = h.runtime.running("side")
        sandbox = next(r for r in h.runtime.running() if r.is_sandbox)
        assert main.sandbox_id == side.sandbox_id == sandbox.id
        # The agent picked the address and asked the engine for it.
        assert sandbox.ip == sandbox.labels.instance_ip == "10.244.1.2"
        reasons = [r for n, r, _ in h.reporter.events if n == "web"]
        assert reasons == ["Created", "Started", "Created", "Started"]

    asyncio.run(Harness(tmp_path).run(scenario))


def test_instance_of_one_container_runs_it_without_a_sandbox(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        h.engine.set_desired(
            [make_instance("web", hostname="www", containers=[{"name": "main", "image": IMAGE}])]
        )
        await h.until(lambda: h.phase("web") == "Running")
        status = h.reporter.last("web")
        assert status is not None and status.instance_ip == "10.244.1.2"
        [main] = h.runtime.running()
        assert not main.is_sandbox and main.sandbox_id is None
        assert main.ip == main.labels.instance_ip == "10.244.1.2"
        request = h.runtime.requests[main.id]
        assert isinstance(request, ContainerRequest) and request.attachment is not None
        assert request.attachment.hostname == "www"
        assert request.attachment.network == "kopflet"
        assert ("create-sandbox", "web") not in h.runtime.calls

    asyncio.run(Harness(tmp_path).run(scenario))


def test_a_restarted_container_without_a_sandbox_keeps_the_instance_ip(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        h.engine.set_desired([make_instance("a"), make_instance("b")])
        await h.until(lambda: h.phase("a") == "Running" and h.phase("b") == "Running")
        ip_of = {r.labels.instance_name: r.ip for r in h.runtime.running()}
        assert sorted(ip_of.values()) == ["10.244.1.2", "10.244.1.3"]
        [a] = [r for r in h.runtime.running() if r.labels.instance_name == "a"]
        h.runtime.exit(a.id, code=1)
        # A new instance while a's address is free on the network: it gets another one.
        h.engine.put(make_instance("c"))
        await h.until(lambda: h.phase("c") == "Running")
        await h.until(lambda: len(h.runtime.running()) == 3)
        now = {r.labels.instance_name: (r.ip, r.restart_count) for r in h.runtime.running()}
        assert now == {
            "a": (ip_of["a"], 1),
            "b": (ip_of["b"], 0),
            "c": ("10.244.1.4", 0),
        }
        status = h.reporter.last("a")
        assert status is not None and status.instance_ip == ip_of["a"]

    asyncio.run(Harness(tmp_path).run(scenario))


def test_a_restarted_agent_learns_the_addresses_before_it_picks_one(tmp_path: Path) -> None:
    before: dict[str, str | None] = {}

    async def start(h: Harness) -> None:
        h.engine.set_desired([make_instance("a"), make_instance("b")])
        await h.until(lambda: len(h.runtime.running()) == 2)
        before.update({r.labels.instance_name: r.ip for r in h.runtime.running()})
        [a] = [r for r in h.runtime.running() if r.labels.instance_name == "a"]
        h.runtime.exit(a.id, code=0)  # a's address is free on the network, still a's

    first = Harness(tmp_path)
    asyncio.run(first.run(start))
    second = Harness(tmp_path, runtime=first.runtime)

    async def again(h: Harness) -> None:
        # c comes first in the desired set, before a restarts.
        h.engine.set_desired([make_instance("c"), make_instance("a"), make_instance("b")])
        await h.until(lambda: len(h.runtime.running()) == 3)
        ips = {r.labels.instance_name: r.ip for r in h.runtime.running()}
        assert ips == {**before, "c": "10.244.1.4"}

    asyncio.run(second.run(again))


def test_an_address_taken_by_something_else_is_given_up_for_another(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        # Something not ours holds .2 on the network (the engine refuses the start).
        h.runtime.squat("10.244.1.2")
        h.engine.set_desired([make_instance("a")])
        await h.until(lambda: h.phase("a") == "Running", seconds=8)
        [a] = h.runtime.running()
        assert a.ip == a.labels.instance_ip == "10.244.1.3" and a.restart_count == 0
        messages = [m for n, r, m in h.reporter.events if n == "a" and r == "FailedCreateSandbox"]
        # Asked twice (the engine may be letting go of it late), then given up.
        assert len(messages) == 2 and "retrying" in messages[0]
        assert "another address follows" in messages[1]

    asyncio.run(Harness(tmp_path).run(scenario))


def test_an_address_the_engine_lets_go_of_late_is_kept(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        h.runtime.squat("10.244.1.2", refusals=1)
        h.engine.set_desired([make_instance("a")])
        await h.until(lambda: h.phase("a") == "Running", seconds=8)
        [a] = h.runtime.running()
        assert a.ip == a.labels.instance_ip == "10.244.1.2"
        messages = [m for n, r, m in h.reporter.events if n == "a" and r == "FailedCreateSandbox"]
        assert len(messages) == 1 and "retrying" in messages[0]

    asyncio.run(Harness(tmp_path).run(scenario))


def test_nothing_is_removed_before_the_first_desired_set(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        h.engine.set_desired([make_instance("old", containers=TWO_CONTAINERS)])
        await h.until(lambda: len(h.runtime.running()) == 3)

    first = Harness(tmp_path)
    asyncio.run(first.run(scenario))
    # A new agent on the same engine: until it knows what is desired, it touches nothing.
    second = Harness(tmp_path, runtime=first.runtime)

    async def restart(h: Harness) -> None:
        calls_before = len(h.runtime.calls)
        await asyncio.sleep(0.4)
        assert len(h.runtime.running()) == 3 and h.runtime.calls[calls_before:] == []
        h.engine.set_desired([])
        await h.until(lambda: not h.runtime.containers)
        assert ("stop", "main/3") in h.runtime.calls[calls_before:]

    asyncio.run(second.run(restart))


def test_restarted_agent_adopts_running_containers_without_duplicates(tmp_path: Path) -> None:
    instances = [make_instance(f"web-{i}") for i in range(5)]

    async def start(h: Harness) -> None:
        h.engine.set_desired(instances)
        await h.until(lambda: len(h.runtime.running("main")) == 5)

    first = Harness(tmp_path)
    asyncio.run(first.run(start))
    second = Harness(tmp_path, runtime=first.runtime)
    calls_before = len(first.runtime.calls)

    async def adopt(h: Harness) -> None:
        h.engine.set_desired(instances)
        await h.until(lambda: all(h.phase(f"web-{i}") == "Running" for i in range(5)))
        await asyncio.sleep(0.3)

    asyncio.run(second.run(adopt))
    assert first.runtime.calls[calls_before:] == []
    assert len(first.runtime.running("main")) == 5


def test_status_is_written_only_when_it_changes(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        h.engine.set_desired([make_instance("web")])
        await h.until(lambda: h.phase("web") == "Running")
        writes = len(h.reporter.statuses["web"])
        await asyncio.sleep(0.6)  # three resyncs and a dozen relists
        assert len(h.reporter.statuses["web"]) == writes

    asyncio.run(Harness(tmp_path).run(scenario))


def test_a_pass_asks_the_engine_only_when_it_may_have_changed(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        web = make_instance("web")
        h.engine.set_desired([web])
        await h.until(lambda: h.phase("web") == "Running")
        await asyncio.sleep(0.6)  # the start's event, the confirming pass, relists
        # One listing before the start (nothing there) and one after it, read back: the
        # start's own event, the confirming pass and the relists that saw it reuse that.
        assert h.runtime.instance_listings == 2
        passes = h.passes()
        labelled = dataclasses.replace(web.metadata, labels={"tier": "front"})
        h.engine.put(dataclasses.replace(web, metadata=labelled))
        await h.until(lambda: h.passes() > passes)
        assert h.runtime.instance_listings == 2, "a spec change read the engine"
        # The container dies by itself: its event makes the next pass read, and restart it.
        (first,) = h.runtime.running("main")
        h.runtime.exit(first.id, code=1)
        await h.until(lambda: [r.id for r in h.runtime.running("main")] not in ([], [first.id]))
        assert h.runtime.instance_listings > 2
        await asyncio.sleep(0.3)
        # Deleted (the finalizer holds the Instance): stopped and removed in one pass, read
        # back once; the engine's die and destroy events of that wake no pass that reads.
        listings = h.runtime.instance_listings
        deleting = being_deleted(web)
        h.engine.put(deleting)
        await h.until(lambda: h.reporter.cleaned == ["web"])
        await asyncio.sleep(0.3)
        assert h.runtime.instance_listings - listings == 1
        h.engine.discard(web.metadata.uid or "")
        await asyncio.sleep(0.1)
        assert h.runtime.instance_listings - listings == 1

    asyncio.run(Harness(tmp_path, resync_period_seconds=30.0).run(scenario))


def test_the_echo_of_a_status_or_finalizer_write_costs_no_pass_but_a_change_does(
    tmp_path: Path,
) -> None:
    async def scenario(h: Harness) -> None:
        web = make_instance("web")
        h.engine.set_desired([web])
        await h.until(lambda: h.phase("web") == "Running")
        await asyncio.sleep(0.2)
        passes = h.passes()
        meta = dataclasses.replace(
            web.metadata, resource_version="7", finalizers=("kopflet.dev/agent",)
        )
        echo = dataclasses.replace(web, metadata=meta, status=h.reporter.last("web"))
        h.engine.put(echo)
        await asyncio.sleep(0.3)
        assert h.passes() == passes, "a pass for the echo of our own writes"
        # The watched status is not ours any more (a late write landed): a pass writes it.
        h.reporter.stale = True
        h.engine.put(dataclasses.replace(echo, status=InstanceStatus(phase="Pending")))
        await h.until(lambda: h.passes() > passes)
        h.reporter.stale = False
        passes = h.passes()
        # A label is read by a pass (the downward API): a change of one syncs.
        labelled = dataclasses.replace(echo.metadata, labels={"tier": "front"})
        h.engine.put(dataclasses.replace(echo, metadata=labelled))
        await h.until(lambda: h.passes() > passes)

    asyncio.run(Harness(tmp_path, resync_period_seconds=30.0).run(scenario))


def test_crashing_container_restarts_then_waits_in_crash_loop_back_off(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        h.engine.set_desired([make_instance("web")])
        await h.until(lambda: len(h.runtime.running("main")) == 1)
        h.runtime.exit(h.runtime.running("main")[0].id, code=1)
        # The first crash restarts at once.
        await h.until(lambda: len(h.runtime.running("main")) == 1)
        h.runtime.exit(h.runtime.running("main")[0].id, code=1)
        await h.until(lambda: h.reason("web") == "CrashLoopBackOff")
        crashed_at = time.time()
        await h.until(lambda: len(h.runtime.running("main")) == 1)
        waited = time.time() - crashed_at
        assert 0.2 < waited < 1.5  # the 0.4 s initial back-off of this harness
        status = h.reporter.last("web")
        assert status is not None and status.restart_count == 2

    asyncio.run(Harness(tmp_path).run(scenario))


def test_deleted_instance_is_stopped_with_its_grace_period_and_cleaned_up(
    tmp_path: Path,
) -> None:
    async def scenario(h: Harness) -> None:
        inst = make_instance("web", volumes=[{"name": "scratch", "emptyDir": {}}])
        h.engine.set_desired([inst])
        await h.until(lambda: h.phase("web") == "Running")
        assert (tmp_path / "volumes" / "uid-web" / "scratch").is_dir()
        deleting = being_deleted(inst)
        h.engine.put(deleting)
        await h.until(lambda: h.reporter.cleaned == ["web"])
        assert not h.runtime.containers
        assert ("stop", "main/3") in h.runtime.calls
        assert not (tmp_path / "volumes" / "uid-web").exists()

    asyncio.run(Harness(tmp_path).run(scenario))


def test_deleted_instance_leaves_no_state_behind(tmp_path: Path) -> None:
    """Churn must not grow the agent: once an Instance is gone, late wakes for it (a
    Docker event or relist change arriving after its worker ended) keep nothing."""

    async def scenario(h: Harness) -> None:
        inst = make_instance("web")
        uid = inst.metadata.uid
        assert uid is not None
        h.engine.set_desired([inst])
        await h.until(lambda: h.phase("web") == "Running")
        deleting = being_deleted(inst)
        h.engine.put(deleting)
        await h.until(lambda: h.reporter.cleaned == ["web"])
        h.engine.discard(uid)
        await h.until(lambda: uid not in h.engine._workers)
        h.engine.wake(uid)
        await asyncio.sleep(0.3)  # a few relists of the engine
        assert uid not in h.engine._wakeups
        assert uid not in h.engine._workers
        assert uid not in h.engine._written
        assert uid not in h.engine._messages
        assert len(h.engine._reads) == 0

    asyncio.run(Harness(tmp_path).run(scenario))


def test_instance_bound_to_another_node_is_removed(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        inst = make_instance("web")
        h.engine.set_desired([inst])
        await h.until(lambda: h.phase("web") == "Running")
        h.engine.put(make_instance("web", nodeName="node-b"))
        await h.until(lambda: not h.runtime.containers)

    asyncio.run(Harness(tmp_path).run(scenario))


def test_missing_config_map_key_blocks_the_start_until_it_appears(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        env = [{"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}}]
        h.engine.set_desired(
            [make_instance("web", containers=[{"name": "main", "image": IMAGE, "env": env}])]
        )
        await h.until(lambda: h.reason("web") == "CreateContainerConfigError")
        status = h.reporter.last("web")
        assert status is not None and status.container_statuses is not None
        waiting = status.container_statuses[0].state
        assert waiting is not None and waiting.waiting is not None
        assert waiting.waiting.message == 'configmap "cfg" not found'
        h.objects.config_maps["default/cfg"] = {"mode": b"fast"}
        h.engine.wake_all()
        await h.until(lambda: h.phase("web") == "Running")
        [app] = h.runtime.running("main")
        request = h.runtime.requests[app.id]
        assert ("MODE", "fast") in getattr(request, "env", ())

    asyncio.run(Harness(tmp_path).run(scenario))


def test_unreachable_registry_is_err_image_pull_then_image_pull_back_off(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        h.engine.set_desired(
            [make_instance("web", containers=[{"name": "main", "image": "far/away:1"}])]
        )

        def reasons() -> list[str | None]:
            seen = [s.reason for s in h.reporter.statuses.get("web", [])]
            return [r for i, r in enumerate(seen) if i == 0 or seen[i - 1] != r]

        await h.until(lambda: "ImagePullBackOff" in reasons())
        assert reasons()[:2] == ["ErrImagePull", "ImagePullBackOff"]
        # Waiting out the back-off is quiet: a pass now and then, not a busy loop.
        passes = h.passes()
        await asyncio.sleep(1.0)
        assert h.passes() - passes < 20
        h.runtime.pullable["far/away:1"] = ImageInfo(id="sha256:far")
        await h.until(lambda: h.phase("web") == "Running", seconds=5)

    asyncio.run(Harness(tmp_path).run(scenario))


def _with_parallel_starts(h: Harness, limit: int) -> Harness:
    h.config = dataclasses.replace(h.config, max_parallel_starts=limit)
    h.engine = RuntimeEngine(
        runtime=h.runtime, config=h.config, resolver=h.objects, reporter=h.reporter
    )
    return h


@pytest.mark.parametrize(("limit", "most"), [(2, 2), (0, 6)])
def test_a_burst_starts_at_most_the_parallel_starts_at_once(
    tmp_path: Path, limit: int, most: int
) -> None:
    """Six instances bound together: with a limit of 2 the engine never has more than two
    starts in flight and all six still run; with no limit (0) it has all six at once."""
    names = [f"web-{i}" for i in range(5)]

    async def scenario(h: Harness) -> None:
        h.runtime.start_seconds = 0.1
        h.engine.set_desired(
            [make_instance(n) for n in names] + [make_instance("pair", containers=TWO_CONTAINERS)]
        )
        await h.until(lambda: all(h.phase(n) == "Running" for n in [*names, "pair"]))
        assert h.runtime.most_starting == most

    asyncio.run(_with_parallel_starts(Harness(tmp_path), limit).run(scenario))


def test_an_image_pull_holds_no_start_slot(tmp_path: Path) -> None:
    """With one start at a time, an instance whose image is being pulled does not keep
    another, whose image is present, from starting."""

    async def scenario(h: Harness) -> None:
        h.runtime.pulls_held = asyncio.Event()
        h.runtime.pullable["far/away:1"] = ImageInfo(id="sha256:far")
        h.engine.set_desired(
            [make_instance("slow", containers=[{"name": "main", "image": "far/away:1"}])]
        )
        await h.until(lambda: ("pull", "far/away:1") in h.runtime.calls)
        h.engine.set_desired(
            [
                make_instance("slow", containers=[{"name": "main", "image": "far/away:1"}]),
                make_instance("web"),
            ]
        )
        await h.until(lambda: h.phase("web") == "Running")
        assert h.phase("slow") != "Running"
        h.runtime.pulls_held.set()
        await h.until(lambda: h.phase("slow") == "Running")

    asyncio.run(_with_parallel_starts(Harness(tmp_path), 1).run(scenario))


def test_liveness_failure_kills_and_restarts_the_container(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        probe = {
            "exec": {"command": ["check"]},
            "periodSeconds": 1,
            "failureThreshold": 1,
            "timeoutSeconds": 1,
        }
        # Sick once, healthy ever after.
        h.runtime.exec_results[("check",)] = [
            ExecResult(exit_code=1, output="sick"),
            ExecResult(exit_code=0),
        ]
        h.engine.set_desired(
            [
                make_instance(
                    "web", containers=[{"name": "main", "image": IMAGE, "livenessProbe": probe}]
                )
            ]
        )
        await h.until(lambda: any(r == "Unhealthy" for _, r, _ in h.reporter.events))
        await h.until(lambda: ("stop", "main/3") in h.runtime.calls)
        await h.until(lambda: (s := h.reporter.last("web")) is not None and s.restart_count == 1)
        assert len(h.runtime.running("main")) == 1

    asyncio.run(Harness(tmp_path).run(scenario))


def test_unreachable_engine_makes_the_runtime_unhealthy(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.until(lambda: h.engine.healthy())
        h.runtime.available = False
        await h.until(lambda: not h.engine.healthy())
        h.runtime.available = True
        await h.until(lambda: h.engine.healthy())

    asyncio.run(Harness(tmp_path).run(scenario))


def test_an_engine_that_stops_answering_is_told_at_once_not_on_every_failure(
    tmp_path: Path,
) -> None:
    """The node's status is woken when the engine stops answering (a relist fails after one
    that did not, or the event stream breaks), once per outage, not once per failed relist."""
    troubles: list[float] = []
    h = Harness(tmp_path)
    h.engine = RuntimeEngine(
        runtime=h.runtime,
        config=h.config,
        resolver=h.objects,
        reporter=h.reporter,
        on_engine_trouble=lambda: troubles.append(time.monotonic()),
    )

    async def scenario(h: Harness) -> None:
        await h.until(lambda: h.engine.healthy())
        await asyncio.sleep(0.2)
        assert troubles == []
        h.runtime.available = False
        await h.until(lambda: len(troubles) == 1)
        await asyncio.sleep(0.3)  # six relists more, all failing
        assert len(troubles) == 1
        h.runtime.available = True
        await asyncio.sleep(0.3)
        assert len(troubles) == 1
        h.runtime.break_events()
        await h.until(lambda: len(troubles) == 2)

    asyncio.run(h.run(scenario))


def test_sandbox_image_is_looked_up_once_until_a_sandbox_create_fails(tmp_path: Path) -> None:
    def two(name: str) -> Instance:
        return make_instance(name, containers=TWO_CONTAINERS)

    async def scenario(h: Harness) -> None:
        h.engine.set_desired([two("a"), two("b")])
        await h.until(lambda: h.phase("a") == "Running" and h.phase("b") == "Running")
        assert h.runtime.image_lookups[SANDBOX_IMAGE] == 1
        # Removed behind the agent's back: the next create fails, and the retry pulls it.
        h.runtime.pullable[SANDBOX_IMAGE] = h.runtime.images.pop(SANDBOX_IMAGE)
        h.engine.set_desired([two("a"), two("b"), two("c")])
        await h.until(lambda: h.phase("c") == "Running", seconds=8)
        assert ("pull", SANDBOX_IMAGE) in h.runtime.calls
        assert h.runtime.image_lookups[SANDBOX_IMAGE] == 2

    asyncio.run(Harness(tmp_path).run(scenario))


def test_the_relist_slows_down_while_the_event_stream_is_open(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.config = dataclasses.replace(
        h.config, evented_relist_period_seconds=60.0, relist_threshold_seconds=10.0
    )
    h.engine = RuntimeEngine(
        runtime=h.runtime, config=h.config, resolver=h.objects, reporter=h.reporter
    )
    relists: list[float] = []
    list_states = h.runtime.list_container_states

    async def counted() -> list[ContainerState]:
        relists.append(time.monotonic())
        return await list_states()

    h.runtime.list_container_states = counted  # type: ignore[method-assign]

    async def scenario(h: Harness) -> None:
        h.engine.set_desired([make_instance("web")])
        await h.until(lambda: h.phase("web") == "Running")
        # Open stream: at most half the health threshold (5 s) between relists, not 0.05 s.
        assert h.engine.relist_period() == 5.0
        # The stream's opening asks for one relist at once; on a busy machine it may land
        # after Running is seen. Let it, then count: at 0.05 s, 0.5 s would hold ~10.
        await asyncio.sleep(0.3)
        settled = len(relists)
        await asyncio.sleep(0.5)
        assert len(relists) == settled
        # A change the stream tells wakes the sync all the same.
        running = h.runtime.running("main")[0]
        h.runtime.exit(running.id, code=1)
        await h.until(
            lambda: (
                len(h.runtime.running("main")) == 1
                and h.runtime.running("main")[0].id != running.id
            )
        )
        # The stream breaks: a relist at once, then one every relist period (0.05 s).
        before = len(relists)
        h.runtime.break_events()
        # Five within 2.5 s: at the slow period there would be the one the break asks for.
        await h.until(lambda: len(relists) - before >= 5, seconds=2.5)
        assert h.engine.relist_period() == 0.05

    asyncio.run(h.run(scenario))


def test_an_older_agents_sandbox_is_kept_and_its_address_never_given_away(
    tmp_path: Path,
) -> None:
    """An upgrade: the engine holds a sandbox and its container from an agent that let the
    engine pick the address and labelled neither with it."""
    runtime = FakeRuntime(now=time.time, images=(IMAGE, SANDBOX_IMAGE))
    old = make_instance("old")
    main = old.spec.container_named("main")
    assert main is not None

    def labels(role: ContainerRole, name: str, spec_hash: str) -> ContainerLabels:
        return ContainerLabels(
            role=role,
            node="node-a",
            instance_uid=UID("uid-old"),
            instance_name="old",
            instance_namespace="default",
            container_name=name,
            spec_hash=spec_hash,
            restart_count=0,
            grace_period_seconds=3,
        )

    async def older_agent() -> tuple[str, str]:
        await runtime.ensure_network(name="kopflet", subnet="10.244.1.0/24", bridge_name="b")
        sandbox = await runtime.create_sandbox(
            SandboxRequest(
                labels=labels(
                    ContainerRole.SANDBOX, "", sandbox_spec_hash(old.spec, instance_name="old")
                ),
                image=SANDBOX_IMAGE,
                command=("sleep", "1000"),
                network="kopflet",
                hostname="old",
            )
        )
        app = await runtime.create_container(
            ContainerRequest(
                labels=labels(ContainerRole.APP, "main", container_spec_hash(main)),
                sandbox_id=sandbox,
                image=IMAGE,
            )
        )
        await runtime.start_container(app)
        return sandbox, app

    sandbox, app = asyncio.run(older_agent())
    [held] = [r.ip for r in runtime.running() if r.is_sandbox]

    async def scenario(h: Harness) -> None:
        calls_before = len(h.runtime.calls)
        h.engine.set_desired([make_instance("new"), old])
        await h.until(lambda: h.phase("new") == "Running" and h.phase("old") == "Running")
        await asyncio.sleep(0.3)
        # The old instance runs on in its sandbox, untouched, with its address.
        assert {r.id for r in h.runtime.running() if r.labels.instance_name == "old"} == {
            sandbox,
            app,
        }
        assert [c for c in h.runtime.calls[calls_before:] if c[0] in ("stop", "remove")] == []
        status = h.reporter.last("old")
        assert status is not None and status.instance_ip == held
        # The new one got another address at the first try.
        [new] = [r for r in h.runtime.running() if r.labels.instance_name == "new"]
        assert new.ip != held and new.ip == new.labels.instance_ip
        assert "FailedCreateSandbox" not in [r for n, r, _ in h.reporter.events if n == "new"]

    asyncio.run(Harness(tmp_path, runtime=runtime).run(scenario))
