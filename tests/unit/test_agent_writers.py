"""What the agent writes to the API: status patches, finalizers and Events."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fake_kube_api import FakeKubeApi

from kopflet.agent.api_reporter import ApiReporter
from kopflet.agent.event_recorder import MAX_NOTE_BYTES, EventRecorder, ObjectRef
from kopflet.agent.instance_finalizers import MAX_SETTLED, FinalizerWriter
from kopflet.agent.kube_client import ApiUnavailable, Conflict
from kopflet.agent.runtime.reporting import InstanceRef
from kopflet.agent.status_patch import (
    finalizers_with,
    finalizers_without,
    status_merge_patch,
    version_after,
)
from kopflet.api import UID, Instance, InstanceStatus
from kopflet.api.constants import AGENT_FINALIZER

pytestmark = pytest.mark.unit

PATH = "/apis/kopflet.dev/v1alpha1/namespaces/ns/instances/web"


def instance_dict(**meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kopflet.dev/v1alpha1",
        "kind": "Instance",
        "metadata": {"name": "web", "namespace": "ns", **meta},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "img"}]},
    }


def stored_instance(api: FakeKubeApi, **meta: Any) -> Instance:
    return Instance.from_dict(api.put_object(PATH, instance_dict(uid="u1", **meta)))


# -- status patches ------------------------------------------------------------------------


def test_status_patch_holds_only_changed_fields_and_nulls_removed_ones() -> None:
    old = {"phase": "Pending", "reason": "ContainerCreating", "hostIP": "10.0.0.1"}
    new = {"phase": "Running", "hostIP": "10.0.0.1", "instanceIP": "10.244.1.2"}
    assert status_merge_patch(new, [old]) == {
        "phase": "Running",
        "instanceIP": "10.244.1.2",
        "reason": None,
    }


def test_status_patch_removes_a_field_written_moments_ago_that_the_watch_never_showed() -> None:
    watched = {"phase": "Pending"}
    written = {"phase": "Running", "message": "starting"}
    assert status_merge_patch({"phase": "Running"}, [written, watched]) == {"message": None}


def test_nothing_changed_is_an_empty_patch() -> None:
    same = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    assert status_merge_patch(dict(same), [same, None]) == {}


def test_finalizer_lists_keep_other_finalizers_and_their_order() -> None:
    assert finalizers_with(["a", "b"], AGENT_FINALIZER) == ["a", "b", AGENT_FINALIZER]
    assert finalizers_with([AGENT_FINALIZER], AGENT_FINALIZER) is None
    assert finalizers_without(["a", AGENT_FINALIZER, "b"], AGENT_FINALIZER) == ["a", "b"]
    assert finalizers_without(["a"], AGENT_FINALIZER) is None


def test_reporter_patches_status_with_a_uid_precondition_and_only_the_changes() -> None:
    api = FakeKubeApi()
    instance = stored_instance(api)
    recorder = EventRecorder(api, reporting_instance="n1")
    reporter = ApiReporter(api, events=recorder, finalizers=FinalizerWriter(api))

    async def scenario() -> None:
        await reporter.instance_status(instance, InstanceStatus(phase="Pending"))
        await reporter.instance_status(
            instance, InstanceStatus(phase="Running", instance_ip="10.244.1.2")
        )

    asyncio.run(scenario())
    patches = [body for path, body in api.methods("PATCH")]
    assert patches == [
        {"metadata": {"uid": "u1"}, "status": {"phase": "Pending"}},
        {"metadata": {"uid": "u1"}, "status": {"phase": "Running", "instanceIP": "10.244.1.2"}},
    ]
    assert api.objects[PATH]["status"] == {"phase": "Running", "instanceIP": "10.244.1.2"}


def test_reporter_refuses_to_write_the_status_of_a_deleted_instance_onto_its_successor() -> None:
    api = FakeKubeApi()
    old = stored_instance(api)
    api.put_object(PATH, instance_dict(uid="u2"))  # deleted and created again
    reporter = ApiReporter(
        api, events=EventRecorder(api, reporting_instance="n1"), finalizers=FinalizerWriter(api)
    )
    with pytest.raises(Conflict):
        asyncio.run(reporter.instance_status(old, InstanceStatus(phase="Running")))
    assert "status" not in api.objects[PATH]


def test_a_late_write_that_lands_over_ours_is_written_over_again() -> None:
    # A status write that timed out while the API server was frozen lands after a newer one:
    # the watched copy is then newer than our last write and holds the older status.
    api = FakeKubeApi()
    pending = InstanceStatus(phase="Pending")
    running = InstanceStatus(phase="Running", instance_ip="10.244.1.2")
    lagging = stored_instance(api)
    reporter = ApiReporter(
        api, events=EventRecorder(api, reporting_instance="n1"), finalizers=FinalizerWriter(api)
    )

    def watched() -> Instance:
        return Instance.from_dict(api.objects[PATH])

    async def scenario() -> None:
        await reporter.instance_status(lagging, pending)
        await reporter.instance_status(watched(), running)
        # The watch has not caught up: nothing is overwritten, nothing is written again.
        assert not reporter.overwritten(lagging)
        await reporter.instance_status(lagging, running)
        # A change of metadata only: newer, the same status.
        api.put_object(PATH, {**api.objects[PATH], "metadata": {**watched().metadata.to_dict()}})
        assert not reporter.overwritten(watched())
        writes = len(api.methods("PATCH"))
        # The late request lands: "Pending" at a newer version than our "Running".
        await api.merge_patch(
            PATH + "/status", {"status": {"phase": "Pending", "instanceIP": None}}
        )
        assert reporter.overwritten(watched())
        await reporter.instance_status(watched(), running)
        assert len(api.methods("PATCH")) == writes + 2
        assert api.objects[PATH]["status"] == {"phase": "Running", "instanceIP": "10.244.1.2"}
        assert not reporter.overwritten(watched())

    asyncio.run(scenario())
    assert reporter.status_writes == 3


def test_resource_versions_are_compared_as_revisions_and_anything_else_is_not_newer() -> None:
    assert version_after("10", "9") and not version_after("9", "10")
    assert not version_after("7", "7")
    assert not version_after("abc", "7") and not version_after("7", "")


# -- finalizers ---------------------------------------------------------------------------------


def run_writer(writer: FinalizerWriter, rounds: int = 1) -> None:
    asyncio.run(asyncio.wait_for(writer.run(max_rounds=rounds), timeout=5))


def no_sleep() -> Any:
    async def sleep(_seconds: float) -> None:
        return None

    return sleep


def test_finalizer_is_added_next_to_others_conditional_on_the_watched_version() -> None:
    api = FakeKubeApi()
    instance = stored_instance(api, finalizers=["someone.else/x"])
    writer = FinalizerWriter(api, sleep=no_sleep())
    assert writer.needs_adding(instance)
    writer.request(instance, present=True)
    run_writer(writer)
    assert api.objects[PATH]["metadata"]["finalizers"] == ["someone.else/x", AGENT_FINALIZER]
    [(_, patch)] = api.methods("PATCH")
    assert patch["metadata"]["resourceVersion"] == instance.metadata.resource_version
    assert writer.pending == 0


def test_finalizer_write_on_a_stale_version_rereads_and_keeps_the_newcomers_finalizer() -> None:
    api = FakeKubeApi()
    stale = stored_instance(api)
    fresh = dict(api.objects[PATH])
    fresh["metadata"] = {**fresh["metadata"], "finalizers": ["newcomer/y"]}
    api.put_object(PATH, fresh)
    writer = FinalizerWriter(api, sleep=no_sleep())
    writer.request(stale, present=True)
    run_writer(writer)
    assert api.objects[PATH]["metadata"]["finalizers"] == ["newcomer/y", AGENT_FINALIZER]


def test_finalizer_removal_waits_out_an_unreachable_api_server_and_then_happens() -> None:
    api = FakeKubeApi()
    instance = stored_instance(api, finalizers=[AGENT_FINALIZER])
    api.fail("PATCH", PATH, ApiUnavailable("refused"))
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    writer = FinalizerWriter(api, retry_seconds=2.0, sleep=sleep)
    writer.request(instance, present=False)
    run_writer(writer, rounds=2)
    assert sleeps == [2.0]
    assert api.objects[PATH]["metadata"].get("finalizers") in (None, [])


def test_finalizer_is_not_added_to_an_instance_being_deleted() -> None:
    api = FakeKubeApi()
    instance = stored_instance(api)
    deleting = dict(api.objects[PATH])
    deleting["metadata"] = {**deleting["metadata"], "deletionTimestamp": "2025-01-01T00:00:00Z"}
    api.put_object(PATH, deleting)
    writer = FinalizerWriter(api, sleep=no_sleep())
    assert not writer.needs_adding(Instance.from_dict(api.objects[PATH]))
    writer.request(instance, present=True)  # requested before the deletion was seen
    run_writer(writer)
    assert "finalizers" not in api.objects[PATH]["metadata"]


def test_finalizer_of_a_replaced_instance_is_left_alone() -> None:
    api = FakeKubeApi()
    old = stored_instance(api, finalizers=[AGENT_FINALIZER])
    api.put_object(PATH, instance_dict(uid="u2", finalizers=[AGENT_FINALIZER]))
    writer = FinalizerWriter(api, sleep=no_sleep())
    writer.request(old, present=False)
    run_writer(writer)
    assert api.objects[PATH]["metadata"]["finalizers"] == [AGENT_FINALIZER]


def written(api: FakeKubeApi) -> list[tuple[str, Any]]:
    return [(m, b) for m, _, b in api.calls if m in ("PATCH", "JSONPATCH", "GET")]


def test_finalizer_removal_is_one_request_though_the_status_changed_since_it_was_read() -> None:
    api = FakeKubeApi()
    seen = stored_instance(api, finalizers=["other/z", AGENT_FINALIZER])
    # The agent's own Terminating status write, after the watch showed the Instance.
    changed = dict(api.objects[PATH])
    changed["status"] = {"phase": "Pending", "reason": "Terminating"}
    api.put_object(PATH, changed)
    writer = FinalizerWriter(api, sleep=no_sleep())
    writer.request(seen, present=False)
    run_writer(writer)
    assert api.objects[PATH]["metadata"]["finalizers"] == ["other/z"]
    assert [m for m, _ in written(api)] == ["JSONPATCH"]


def test_finalizer_removal_rereads_when_the_list_changed_and_keeps_the_others() -> None:
    api = FakeKubeApi()
    seen = stored_instance(api, finalizers=["gone/a", AGENT_FINALIZER, "other/z"])
    changed = dict(api.objects[PATH])
    changed["metadata"] = {**changed["metadata"], "finalizers": [AGENT_FINALIZER, "other/z"]}
    api.put_object(PATH, changed)
    writer = FinalizerWriter(api, sleep=no_sleep())
    writer.request(seen, present=False)
    run_writer(writer)
    assert api.objects[PATH]["metadata"]["finalizers"] == ["other/z"]
    assert [m for m, _ in written(api)] == ["JSONPATCH", "GET", "JSONPATCH"]


def test_a_repeated_removal_request_is_not_written_again() -> None:
    api = FakeKubeApi()
    seen = stored_instance(api, finalizers=[AGENT_FINALIZER])
    writer = FinalizerWriter(api, sleep=no_sleep())

    async def scenario() -> None:
        writer.request(seen, present=False)
        running = asyncio.create_task(writer.run())
        # Asked again while the first is written, and again after: the watch lags behind.
        writer.request(seen, present=False)
        for _ in range(20):
            await asyncio.sleep(0)
        writer.request(seen, present=False)
        for _ in range(20):
            await asyncio.sleep(0)
        running.cancel()

    asyncio.run(asyncio.wait_for(scenario(), timeout=5))
    assert [m for m, _ in written(api)] == ["JSONPATCH"]
    assert writer.pending == 0


def test_a_removal_reported_again_after_the_instance_went_is_not_written() -> None:
    api = FakeKubeApi()
    seen = stored_instance(api, finalizers=[AGENT_FINALIZER])
    writer = FinalizerWriter(api, sleep=no_sleep())
    # The watch saw the Instance go; the runtime engine reports it cleaned up afterwards.
    writer.forget(UID("u1"))
    writer.request(seen, present=False)
    assert writer.pending == 0
    run_writer(writer)
    assert written(api) == []


def test_settled_instances_are_remembered_within_a_bound() -> None:
    writer = FinalizerWriter(FakeKubeApi(), sleep=no_sleep())
    for i in range(MAX_SETTLED + 10):
        writer.forget(UID(f"u{i}"))
    assert len(writer._settled) == MAX_SETTLED
    assert UID("u0") not in writer._settled and UID(f"u{MAX_SETTLED + 9}") in writer._settled


def test_a_repeated_add_request_arriving_during_the_write_is_dropped() -> None:
    api = FakeKubeApi()
    seen = stored_instance(api)
    writer = FinalizerWriter(api, sleep=no_sleep())

    answer = asyncio.Event()
    patch = api.merge_patch

    async def slow_patch(path: str, body: Any) -> Any:
        await answer.wait()
        return await patch(path, body)

    api.merge_patch = slow_patch  # type: ignore[method-assign,assignment]

    async def scenario() -> None:
        writer.request(seen, present=True)
        running = asyncio.create_task(writer.write_pending())
        await asyncio.sleep(0)
        writer.request(seen, present=True)  # the watch has not shown the finalizer yet
        answer.set()
        await running

    asyncio.run(asyncio.wait_for(scenario(), timeout=5))
    assert writer.pending == 0
    assert [m for m, _ in written(api)] == ["PATCH"]


def test_cleaned_up_instance_gets_its_finalizer_removed() -> None:
    api = FakeKubeApi()
    instance = stored_instance(api, finalizers=[AGENT_FINALIZER, "other/z"])
    writer = FinalizerWriter(api, sleep=no_sleep())
    reporter = ApiReporter(
        api, events=EventRecorder(api, reporting_instance="n1"), finalizers=writer
    )
    asyncio.run(reporter.instance_cleaned_up(instance))
    run_writer(writer)
    assert api.objects[PATH]["metadata"]["finalizers"] == ["other/z"]


# -- events -----------------------------------------------------------------------------------


REF = ObjectRef(
    api_version="kopflet.dev/v1alpha1", kind="Instance", name="web", uid="u1", namespace="ns"
)
EVENTS = "/apis/events.k8s.io/v1/namespaces/ns/events"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_first_event_is_created_with_reporting_controller_and_regarding() -> None:
    api, clock = FakeKubeApi(), Clock()
    recorder = EventRecorder(api, reporting_instance="node-2", clock=clock)
    recorder.record(REF, type="Normal", reason="Started", message="Started container web")
    assert asyncio.run(recorder.flush())
    [(path, body)] = api.methods("POST")
    assert path == EVENTS
    assert body["reportingController"] == "kopflet.dev/agent"
    assert body["reportingInstance"] == "node-2"
    assert body["regarding"] == {
        "apiVersion": "kopflet.dev/v1alpha1",
        "kind": "Instance",
        "name": "web",
        "uid": "u1",
        "namespace": "ns",
    }
    assert (body["type"], body["reason"], body["action"]) == ("Normal", "Started", "Start")
    assert body["eventTime"] == "2023-11-14T22:13:20.000000Z"
    assert body["metadata"]["name"].startswith("web.") and "series" not in body


def test_an_objects_events_are_named_in_the_order_they_happened() -> None:
    """The API server lists Events by name, and `kubectl describe` shows events.k8s.io Events
    in that order: the names must sort as the events happened, across second and digit
    boundaries."""
    api, clock = FakeKubeApi(), Clock()
    recorder = EventRecorder(api, reporting_instance="n1", clock=clock)
    reasons = ["Pulling", "Pulled", "Created", "Started", "Unhealthy", "Killing"]
    for step, reason in zip([0, 0.000_001, 0.2, 0.999_999, 1.0, 4096.0], reasons, strict=True):
        clock.now = 1_700_000_000.0 + step
        recorder.record(REF, type="Normal", reason=reason, message=f"{reason} web")
        if reason == "Created":  # written apart from the others, as the loop writes
            asyncio.run(recorder.flush())
    asyncio.run(recorder.flush())
    posted = {body["metadata"]["name"]: body["reason"] for _, body in api.methods("POST")}
    assert [posted[name] for name in sorted(posted)] == reasons
    first = min(posted)
    assert first.startswith(f"web.{1_700_000_000 * 10**9:x}") and len(first) == len("web.") + 20


def test_repeats_bump_the_series_of_the_event_already_posted() -> None:
    api, clock = FakeKubeApi(), Clock()
    recorder = EventRecorder(api, reporting_instance="n1", clock=clock)
    recorder.record(REF, type="Warning", reason="BackOff", message="Back-off restarting c")
    asyncio.run(recorder.flush())
    for _ in range(3):
        clock.now += 10
        recorder.record(REF, type="Warning", reason="BackOff", message="Back-off restarting c")
    asyncio.run(recorder.flush())
    assert len(api.methods("POST")) == 1
    [(path, patch)] = api.methods("PATCH")
    name = api.methods("POST")[0][1]["metadata"]["name"]
    assert path == f"{EVENTS}/{name}"
    assert patch == {"series": {"count": 4, "lastObservedTime": "2023-11-14T22:13:50.000000Z"}}


def test_a_different_message_or_a_repeat_after_the_window_is_a_new_event() -> None:
    api, clock = FakeKubeApi(), Clock()
    recorder = EventRecorder(api, reporting_instance="n1", clock=clock)
    recorder.record(REF, type="Warning", reason="Unhealthy", message="liveness probe failed")
    recorder.record(REF, type="Warning", reason="Unhealthy", message="readiness probe failed")
    asyncio.run(recorder.flush())
    clock.now += 601
    recorder.record(REF, type="Warning", reason="Unhealthy", message="liveness probe failed")
    asyncio.run(recorder.flush())
    assert len(api.methods("POST")) == 3 and not api.methods("PATCH")


def test_events_wait_for_an_unreachable_api_server_instead_of_getting_lost() -> None:
    api = FakeKubeApi()
    api.fail("POST", EVENTS, ApiUnavailable("refused"))
    recorder = EventRecorder(api, reporting_instance="n1", clock=Clock())
    recorder.record(REF, type="Normal", reason="Killing", message="Stopping container web")
    assert not asyncio.run(recorder.flush())
    assert asyncio.run(recorder.flush())
    assert len(api.objects) == 1


def test_long_notes_are_cut_to_what_the_api_server_takes() -> None:
    api = FakeKubeApi()
    recorder = EventRecorder(api, reporting_instance="n1", clock=Clock())
    recorder.record(REF, type="Warning", reason="Failed", message="é" * 2000)
    asyncio.run(recorder.flush())
    note = api.methods("POST")[0][1]["note"]
    assert len(note.encode()) <= MAX_NOTE_BYTES and note.endswith("...")


def test_runtime_events_are_about_the_instance_by_uid() -> None:
    api = FakeKubeApi()
    recorder = EventRecorder(api, reporting_instance="n1", clock=Clock())
    reporter = ApiReporter(api, events=recorder, finalizers=FinalizerWriter(api))
    ref = InstanceRef(uid=UID("u9"), name="gone", namespace="ns")
    reporter.event(ref, type="Normal", reason="Killing", message="Stopping container c")
    asyncio.run(recorder.flush())
    regarding = api.methods("POST")[0][1]["regarding"]
    assert (regarding["kind"], regarding["name"], regarding["uid"]) == ("Instance", "gone", "u9")


def test_events_of_a_deleted_instance_are_forgotten_once_written() -> None:
    api = FakeKubeApi()
    recorder = EventRecorder(api, reporting_instance="n1", clock=Clock())
    reporter = ApiReporter(api, events=recorder, finalizers=FinalizerWriter(api))
    ref = InstanceRef(uid=UID("u9"), name="gone", namespace="ns")
    reporter.event(ref, type="Normal", reason="Started", message="Started container c")
    reporter.forget(UID("u9"))
    assert recorder.tracked == 1  # not written yet: kept until it is
    asyncio.run(recorder.flush())
    reporter.event(ref, type="Normal", reason="Killing", message="Stopping container c")
    asyncio.run(recorder.flush())
    reporter.forget(UID("u9"))
    assert recorder.tracked == 0
    assert len(api.methods("POST")) == 2


def test_written_events_expire_after_the_series_window() -> None:
    api, clock = FakeKubeApi(), Clock()
    recorder = EventRecorder(api, reporting_instance="n1", clock=clock)
    for i in range(5):
        recorder.record(REF, type="Normal", reason="Started", message=f"Started container c{i}")
    asyncio.run(recorder.flush())
    clock.now += 601
    recorder.record(REF, type="Normal", reason="Killing", message="Stopping container c0")
    assert recorder.tracked == 1
