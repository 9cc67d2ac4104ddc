"""Table tests of the planner: desired Instance + observed containers -> actions."""

from __future__ import annotations

from typing import Any

import pytest

from kopflet.agent.runtime.backoff import BackoffEntry, BackoffPolicy
from kopflet.agent.runtime.instance_actions import (
    CRASH_LOOP_BACK_OFF,
    ContainerStart,
    CrashKey,
    KillReason,
    PlanContext,
    ProbeVerdict,
    expected_spec_hash,
    plan_instance_actions,
)
from kopflet.agent.runtime.labels import ContainerID, ContainerLabels, ContainerRole
from kopflet.agent.runtime.records import (
    ContainerRecord,
    ObservedInstance,
    RunState,
    observed_instance,
)
from kopflet.agent.runtime.spec_hash import container_spec_hash, sandbox_spec_hash
from kopflet.api import UID, Instance

pytestmark = pytest.mark.unit

NODE = "node-a"
UID_ = UID("uid-1")
NOW = 1_000_000.0


def instance(
    *,
    restart_policy: str = "Always",
    node: str = NODE,
    deleting: bool = False,
    containers: tuple[str, ...] = ("main",),
    image: str = "kopflet/busybox:test",
    grace: int = 7,
) -> Instance:
    meta: dict[str, Any] = {"name": "web-0", "namespace": "default", "uid": UID_}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return Instance.from_dict(
        {
            "metadata": meta,
            "spec": {
                "nodeName": node,
                "restartPolicy": restart_policy,
                "terminationGracePeriodSeconds": grace,
                "containers": [{"name": n, "image": image} for n in containers],
            },
        }
    )


def chash(inst: Instance, name: str = "main") -> str:
    container = inst.spec.container_named(name)
    assert container is not None
    return container_spec_hash(container)


def sandbox(
    inst: Instance, *, attempt: int = 0, state: RunState = RunState.RUNNING, cid: str = "sb0"
) -> ContainerRecord:
    return ContainerRecord(
        id=ContainerID(cid),
        labels=ContainerLabels(
            role=ContainerRole.SANDBOX,
            node=NODE,
            instance_uid=UID_,
            instance_name="web-0",
            instance_namespace="default",
            container_name="",
            spec_hash=sandbox_spec_hash(inst.spec, instance_name="web-0"),
            restart_count=attempt,
            grace_period_seconds=7,
        ),
        state=state,
        image="pause",
        image_id="sha256:p",
        created_at=NOW - 100 + attempt,
        started_at=NOW - 100 + attempt,
        ip="10.244.1.5" if state is RunState.RUNNING else None,
    )


def app(
    cid: str,
    *,
    name: str = "main",
    attempt: int = 0,
    state: RunState = RunState.RUNNING,
    spec_hash: str = "",
    exit_code: int | None = None,
    started: float = NOW - 50,
    finished: float | None = None,
    sandbox_id: str | None = "sb0",
    grace: int = 7,
    ip: str | None = None,
) -> ContainerRecord:
    return ContainerRecord(
        id=ContainerID(cid),
        labels=ContainerLabels(
            role=ContainerRole.APP,
            node=NODE,
            instance_uid=UID_,
            instance_name="web-0",
            instance_namespace="default",
            container_name=name,
            spec_hash=spec_hash,
            restart_count=attempt,
            grace_period_seconds=grace,
        ),
        state=state,
        image="kopflet/busybox:test",
        image_id="sha256:b",
        created_at=started - 1,
        started_at=started,
        finished_at=finished,
        exit_code=exit_code,
        sandbox_id=ContainerID(sandbox_id) if sandbox_id is not None else None,
        ip=ip,
    )


def context(
    backoff: dict[CrashKey, BackoffEntry] | None = None,
    verdicts: dict[ContainerID, ProbeVerdict] | None = None,
    now: float = NOW,
) -> PlanContext:
    table = backoff or {}
    return PlanContext(
        node=NODE,
        now=now,
        policy=BackoffPolicy(initial_seconds=10, max_seconds=300, reset_after_seconds=600),
        backoff=table.get,
        verdicts=verdicts or {},
    )


def exited(
    inst: Instance,
    cid: str,
    *,
    code: int,
    attempt: int = 0,
    ran: float = 5.0,
    finished: float = NOW - 1,
) -> ContainerRecord:
    return app(
        cid,
        attempt=attempt,
        state=RunState.EXITED,
        spec_hash=chash(inst),
        exit_code=code,
        started=finished - ran,
        finished=finished,
    )


def test_new_instance_creates_sandbox_then_starts_every_container() -> None:
    inst = instance(containers=("main", "side"))
    actions = plan_instance_actions(inst, observed_instance(UID_, []), context())
    assert actions.create_sandbox is not None
    assert actions.create_sandbox.restart_count == 0
    assert [(s.name, s.restart_count) for s in actions.start] == [("main", 0), ("side", 0)]
    assert actions.stop == () and actions.remove == ()


def test_healthy_instance_needs_nothing() -> None:
    inst = instance()
    observed = observed_instance(UID_, [sandbox(inst), app("c1", spec_hash=chash(inst))])
    actions = plan_instance_actions(inst, observed, context())
    assert actions.is_empty and not actions.waiting and not actions.completed


@pytest.mark.parametrize(
    ("desired", "reason"),
    [
        (None, KillReason.INSTANCE_GONE),
        (instance(node="node-b"), KillReason.BOUND_ELSEWHERE),
    ],
)
def test_orphaned_instance_is_stopped_with_its_label_grace_and_removed(
    desired: Instance | None, reason: KillReason
) -> None:
    inst = instance()
    records = [sandbox(inst), app("c1", spec_hash=chash(inst), grace=3)]
    actions = plan_instance_actions(desired, observed_instance(UID_, records), context())
    assert {(s.id, s.reason, s.grace_seconds) for s in actions.stop} == {
        ("sb0", reason, 7),
        ("c1", reason, 3),
    }
    assert set(actions.remove) == {"sb0", "c1"}
    assert actions.create_sandbox is None and actions.start == ()


def test_deleting_instance_stops_with_its_grace_period_then_reports_cleaned_up() -> None:
    inst = instance(deleting=True, grace=12)
    records = [sandbox(inst), app("c1", spec_hash=chash(inst))]
    actions = plan_instance_actions(inst, observed_instance(UID_, records), context())
    assert {(s.id, s.reason, s.grace_seconds) for s in actions.stop} == {
        ("sb0", KillReason.DELETING, 12),
        ("c1", KillReason.DELETING, 12),
    }
    assert not actions.cleaned_up
    after = plan_instance_actions(inst, observed_instance(UID_, []), context())
    assert after.cleaned_up and after.is_empty


def test_changed_spec_hash_kills_and_recreates_even_with_restart_policy_never() -> None:
    inst = instance(restart_policy="Never")
    records = [sandbox(inst), app("c1", spec_hash="old-hash", attempt=2)]
    actions = plan_instance_actions(inst, observed_instance(UID_, records), context())
    assert [(s.id, s.reason) for s in actions.stop] == [("c1", KillReason.SPEC_CHANGED)]
    assert [(s.name, s.restart_count) for s in actions.start] == [("main", 3)]
    assert actions.create_sandbox is None


def test_dead_sandbox_is_replaced_and_running_containers_restart_in_the_new_one() -> None:
    inst = instance()
    records = [sandbox(inst, state=RunState.EXITED), app("c1", spec_hash=chash(inst))]
    actions = plan_instance_actions(inst, observed_instance(UID_, records), context())
    assert actions.create_sandbox is not None and actions.create_sandbox.restart_count == 1
    assert {s.id for s in actions.stop} == {"c1"}
    assert "sb0" in actions.remove
    assert [(s.name, s.restart_count) for s in actions.start] == [("main", 1)]


def test_run_once_instance_gets_no_second_sandbox() -> None:
    inst = instance(restart_policy="Never")
    records = [sandbox(inst, state=RunState.EXITED), app("c1", spec_hash=chash(inst))]
    actions = plan_instance_actions(inst, observed_instance(UID_, records), context())
    assert actions.create_sandbox is None and actions.start == ()
    assert [s.id for s in actions.stop] == ["c1"]


def test_first_crash_restarts_at_once_and_arms_a_10s_back_off() -> None:
    inst = instance()
    records = [sandbox(inst), exited(inst, "c1", code=1)]
    actions = plan_instance_actions(inst, observed_instance(UID_, records), context())
    assert len(actions.start) == 1
    start = actions.start[0]
    assert start.restart_count == 1
    assert start.backoff == ((UID_, "main", chash(inst)), BackoffEntry(delay=10, since=NOW - 1))


def test_crashing_container_backs_off_10s_then_20s() -> None:
    inst = instance()
    key: CrashKey = (UID_, "main", chash(inst))
    # Second crash, 3 s ago, with the back-off armed at 10 s: wait until 10 s after it.
    records = [sandbox(inst), exited(inst, "c2", code=1, attempt=1, finished=NOW - 3)]
    armed = {key: BackoffEntry(delay=10, since=NOW - 20)}
    waiting = plan_instance_actions(inst, observed_instance(UID_, records), context(armed))
    assert waiting.start == ()
    assert [(w.name, w.reason) for w in waiting.waiting] == [("main", CRASH_LOOP_BACK_OFF)]
    assert waiting.wake_at == NOW - 3 + 10
    # Once the 10 s are over it restarts and doubles the delay for the next crash.
    later = plan_instance_actions(
        inst, observed_instance(UID_, records), context(armed, now=NOW + 7)
    )
    assert [s.backoff for s in later.start] == [(key, BackoffEntry(delay=20, since=NOW - 3))]


def test_back_off_is_capped_at_300s() -> None:
    inst = instance()
    key: CrashKey = (UID_, "main", chash(inst))
    records = [sandbox(inst), exited(inst, "c9", code=1, attempt=9, finished=NOW - 400)]
    table = {key: BackoffEntry(delay=300, since=NOW - 800)}
    actions = plan_instance_actions(inst, observed_instance(UID_, records), context(table))
    assert [s.backoff for s in actions.start] == [(key, BackoffEntry(delay=300, since=NOW - 400))]


def test_ten_minutes_of_running_resets_the_back_off() -> None:
    inst = instance()
    key: CrashKey = (UID_, "main", chash(inst))
    records = [sandbox(inst), exited(inst, "c5", code=1, attempt=5, ran=601, finished=NOW - 1)]
    table = {key: BackoffEntry(delay=160, since=NOW - 700)}
    actions = plan_instance_actions(inst, observed_instance(UID_, records), context(table))
    assert [s.backoff for s in actions.start] == [(key, BackoffEntry(delay=10, since=NOW - 1))]


@pytest.mark.parametrize(
    ("policy", "code", "restarts", "completed"),
    [
        ("Always", 0, True, False),
        ("Always", 1, True, False),
        ("OnFailure", 0, False, True),
        ("OnFailure", 2, True, False),
        ("Never", 0, False, True),
        ("Never", 2, False, True),
    ],
)
def test_restart_policy_decides_what_an_exit_means(
    policy: str, code: int, restarts: bool, completed: bool
) -> None:
    inst = instance(restart_policy=policy)
    records = [sandbox(inst), exited(inst, "c1", code=code)]
    actions = plan_instance_actions(inst, observed_instance(UID_, records), context())
    assert bool(actions.start) is restarts
    assert actions.completed is completed
    if completed:  # nothing left to hold the network namespace for
        assert [(s.id, s.reason) for s in actions.stop] == [("sb0", KillReason.COMPLETED)]


def test_failed_liveness_kills_without_restarting_in_the_same_pass() -> None:
    inst = instance()
    records = [sandbox(inst), app("c1", spec_hash=chash(inst))]
    verdict = ProbeVerdict(reason=KillReason.LIVENESS_FAILED, message="Liveness probe failed")
    actions = plan_instance_actions(
        inst, observed_instance(UID_, records), context(verdicts={ContainerID("c1"): verdict})
    )
    assert [(s.id, s.reason) for s in actions.stop] == [("c1", KillReason.LIVENESS_FAILED)]
    assert actions.start == ()


def test_interrupted_create_is_removed_and_created_again_under_the_same_count() -> None:
    inst = instance()
    leftover = app("c3", attempt=3, state=RunState.CREATED, spec_hash=chash(inst))
    records = [sandbox(inst), exited(inst, "c2", code=1, attempt=2), leftover]
    actions = plan_instance_actions(inst, observed_instance(UID_, records), context())
    assert "c3" in actions.remove
    assert actions.start == (ContainerStart(name="main", restart_count=3, message="recreated"),)


def test_history_keeps_two_containers_per_name_and_removes_older_ones() -> None:
    inst = instance()
    records = [
        sandbox(inst),
        app("c3", attempt=3, spec_hash=chash(inst)),
        exited(inst, "c2", code=1, attempt=2),
        exited(inst, "c1", code=1, attempt=1),
        exited(inst, "c0", code=1, attempt=0),
    ]
    actions = plan_instance_actions(inst, observed_instance(UID_, records), context())
    assert set(actions.remove) == {"c1", "c0"}
    assert actions.stop == () and actions.start == ()


def test_duplicate_running_container_is_stopped_and_the_newest_kept() -> None:
    inst = instance()
    records = [
        sandbox(inst),
        app("new", attempt=1, spec_hash=chash(inst)),
        app("old", attempt=0, spec_hash=chash(inst)),
    ]
    actions = plan_instance_actions(inst, observed_instance(UID_, records), context())
    assert [(s.id, s.reason) for s in actions.stop] == [("old", KillReason.DUPLICATE)]
    assert actions.remove == ("old",)


def test_superseded_sandboxes_are_removed() -> None:
    inst = instance()
    records = [
        sandbox(inst, attempt=1, cid="sb1"),
        sandbox(inst, attempt=0, cid="sb0"),
        app("c1", spec_hash=chash(inst), sandbox_id="sb1"),
    ]
    actions = plan_instance_actions(inst, observed_instance(UID_, records), context())
    assert [s.id for s in actions.stop] == ["sb0"]
    assert actions.remove == ("sb0",)
    assert actions.create_sandbox is None and actions.start == ()


def test_container_in_a_stale_sandbox_is_restarted_in_the_current_one() -> None:
    inst = instance()
    records = [sandbox(inst, attempt=1, cid="sb1"), app("c1", spec_hash=chash(inst))]
    actions = plan_instance_actions(inst, observed_instance(UID_, records), context())
    assert [(s.id, s.reason) for s in actions.stop] == [("c1", KillReason.SANDBOX_CHANGED)]
    assert [(s.name, s.restart_count) for s in actions.start] == [("main", 1)]


# -- one container, no sandbox ---------------------------------------------------------------


def solo_hash(inst: Instance) -> str:
    return expected_spec_hash(inst, "main", without_sandbox=True)


def solo(inst: Instance, cid: str, **fields: Any) -> ContainerRecord:
    fields.setdefault("spec_hash", solo_hash(inst))
    running = fields.get("state", RunState.RUNNING) is RunState.RUNNING
    return app(cid, sandbox_id=None, ip="10.244.1.9" if running else None, **fields)


def test_new_instance_of_one_container_starts_it_without_a_sandbox() -> None:
    inst = instance()
    actions = plan_instance_actions(inst, ObservedInstance(uid=UID_), context())
    assert actions.without_sandbox and actions.create_sandbox is None
    assert [s.name for s in actions.start] == ["main"]


def test_the_sandbox_less_hash_covers_hostname_and_host_ports() -> None:
    inst = instance()
    renamed = Instance.from_dict(
        {**inst.to_dict(), "spec": {**inst.to_dict()["spec"], "hostname": "other"}}
    )
    assert solo_hash(inst) != solo_hash(renamed)
    assert solo_hash(inst) != chash(inst)


def test_running_container_without_a_sandbox_is_left_alone() -> None:
    inst = instance()
    observed = observed_instance(UID_, [solo(inst, "c1")])
    actions = plan_instance_actions(inst, observed, context())
    assert actions.is_empty and actions.without_sandbox
    assert observed.instance_ip == "10.244.1.9"


def test_a_changed_hostname_recreates_the_container_without_a_sandbox() -> None:
    inst = instance()
    renamed = Instance.from_dict(
        {**inst.to_dict(), "spec": {**inst.to_dict()["spec"], "hostname": "other"}}
    )
    observed = observed_instance(UID_, [solo(inst, "c1")])
    actions = plan_instance_actions(renamed, observed, context())
    assert [(s.id, s.reason) for s in actions.stop] == [("c1", KillReason.SPEC_CHANGED)]
    assert [(s.name, s.restart_count) for s in actions.start] == [("main", 1)]


def test_a_container_left_in_a_removed_sandbox_restarts_holding_the_network() -> None:
    inst = instance()
    # The sandbox was removed behind the agent's back; its one container still runs.
    observed = observed_instance(UID_, [app("c1", spec_hash=solo_hash(inst))])
    actions = plan_instance_actions(inst, observed, context())
    assert actions.without_sandbox
    assert [(s.id, s.reason) for s in actions.stop] == [("c1", KillReason.SANDBOX_CHANGED)]
    assert [s.name for s in actions.start] == ["main"]


def test_an_instance_of_one_container_keeps_the_sandbox_it_has() -> None:
    inst = instance()
    observed = observed_instance(UID_, [sandbox(inst), app("c1", spec_hash=chash(inst))])
    actions = plan_instance_actions(inst, observed, context())
    assert actions.is_empty and not actions.without_sandbox


def test_exited_container_without_a_sandbox_restarts_then_backs_off() -> None:
    inst = instance()
    dead = solo(inst, "c1", state=RunState.EXITED, exit_code=1, started=NOW - 6, finished=NOW - 1)
    first = plan_instance_actions(inst, observed_instance(UID_, [dead]), context())
    assert first.without_sandbox and [s.restart_count for s in first.start] == [1]
    assert first.start[0].backoff is not None
    key, entry = first.start[0].backoff
    assert key == (UID_, "main", solo_hash(inst))
    again = solo(
        inst,
        "c2",
        attempt=1,
        state=RunState.EXITED,
        exit_code=1,
        started=NOW - 2,
        finished=NOW - 1,
    )
    later = plan_instance_actions(
        inst, observed_instance(UID_, [again, dead]), context(backoff={key: entry})
    )
    assert later.start == () and [w.reason for w in later.waiting] == [CRASH_LOOP_BACK_OFF]
