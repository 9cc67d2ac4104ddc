"""Status computation: phase, conditions, containerStatuses in the core shape, reasons."""

from __future__ import annotations

from typing import Any

import pytest

from kopflet.agent.runtime.instance_actions import Waiting
from kopflet.agent.runtime.instance_status import StatusInputs, compute_instance_status
from kopflet.agent.runtime.labels import ContainerID, ContainerLabels, ContainerRole
from kopflet.agent.runtime.records import ContainerRecord, RunState, observed_instance
from kopflet.api import UID, Instance, find_condition

pytestmark = pytest.mark.unit

UID_ = UID("u-1")
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def instance(policy: str = "Always", containers: tuple[str, ...] = ("main",)) -> Instance:
    return Instance.from_dict(
        {
            "metadata": {"name": "web-0", "namespace": "default", "uid": UID_, "generation": 3},
            "spec": {
                "nodeName": "n",
                "restartPolicy": policy,
                "containers": [{"name": n, "image": "kopflet/busybox:test"} for n in containers],
            },
        }
    )


def rec(cid: str, *, name: str = "main", attempt: int = 0, **fields: Any) -> ContainerRecord:
    role = ContainerRole.SANDBOX if name == "" else ContainerRole.APP
    base: dict[str, Any] = {
        "state": RunState.RUNNING,
        "image": "kopflet/busybox:test",
        "image_id": "sha256:abc",
        "created_at": T0,
        "started_at": T0 + 1,
    }
    base.update(fields)
    return ContainerRecord(
        id=ContainerID(cid),
        labels=ContainerLabels(
            role=role,
            node="n",
            instance_uid=UID_,
            instance_name="web-0",
            instance_namespace="default",
            container_name=name,
            spec_hash="h",
            restart_count=attempt,
            grace_period_seconds=30,
        ),
        **base,
    )


SANDBOX = rec("sb", name="", ip="10.244.1.9")


def inputs(**fields: Any) -> StatusInputs:
    return StatusInputs(host_ip="192.168.50.2", now=T0 + 10, **fields)


def test_new_instance_is_pending_with_containers_creating() -> None:
    status = compute_instance_status(
        instance(), observed_instance(UID_, []), inputs(), previous=None
    )
    assert status.phase == "Pending" and status.reason == "ContainerCreating"
    assert status.container_statuses is not None
    only = status.container_statuses[0].to_dict()
    assert only["state"] == {"waiting": {"reason": "ContainerCreating"}}
    assert only["ready"] is False and only["restartCount"] == 0
    ready = find_condition(status.conditions, "Ready")
    assert ready is not None and ready.status == "False"


def test_running_container_without_readiness_probe_is_ready() -> None:
    observed = observed_instance(UID_, [SANDBOX, rec("c1")])
    status = compute_instance_status(instance(), observed, inputs(), previous=None)
    assert (status.phase, status.reason, status.instance_ip, status.host_ip) == (
        "Running",
        "Running",
        "10.244.1.9",
        "192.168.50.2",
    )
    assert status.container_statuses is not None
    assert status.container_statuses[0].to_dict() == {
        "name": "main",
        "ready": True,
        "restartCount": 0,
        "image": "kopflet/busybox:test",
        "state": {"running": {"startedAt": "2026-01-01T00:00:01Z"}},
        "started": True,
        "imageID": "sha256:abc",
        "containerID": "docker://c1",
        "imagePullPolicy": "IfNotPresent",
    }
    conditions = {c.type: c.status for c in status.conditions or ()}
    assert conditions == {
        "Scheduled": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }
    assert status.observed_generation == 3


def test_readiness_gates_the_ready_condition() -> None:
    observed = observed_instance(UID_, [SANDBOX, rec("c1")])
    status = compute_instance_status(
        instance(), observed, inputs(ready=lambda _cid: False), previous=None
    )
    ready = find_condition(status.conditions, "Ready")
    assert ready is not None and (ready.status, ready.reason) == ("False", "ContainersNotReady")
    assert ready.message == "containers with unready status: [main]"


def test_crash_loop_shows_waiting_with_the_last_termination() -> None:
    dead = rec("c2", attempt=2, state=RunState.EXITED, exit_code=3, finished_at=T0 + 5)
    observed = observed_instance(UID_, [SANDBOX, dead])
    waiting = {"main": Waiting(name="main", reason="CrashLoopBackOff", message="back-off 20s")}
    status = compute_instance_status(
        instance(),
        observed,
        inputs(waiting=waiting, messages={ContainerID("c2"): "boom\n"}),
        previous=None,
    )
    assert status.reason == "CrashLoopBackOff" and status.restart_count == 2
    assert status.container_statuses is not None
    cs = status.container_statuses[0].to_dict()
    assert cs["state"] == {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}}
    assert cs["lastState"] == {
        "terminated": {
            "exitCode": 3,
            "reason": "Error",
            "message": "boom",
            "startedAt": "2026-01-01T00:00:01Z",
            "finishedAt": "2026-01-01T00:00:05Z",
            "containerID": "docker://c2",
        }
    }


def test_restarted_container_reports_the_previous_one_as_last_state() -> None:
    oom = rec("c1", state=RunState.EXITED, exit_code=137, oom_killed=True, finished_at=T0 + 2)
    observed = observed_instance(UID_, [SANDBOX, rec("c2", attempt=1), oom])
    status = compute_instance_status(instance(), observed, inputs(), previous=None)
    assert status.container_statuses is not None
    cs = status.container_statuses[0]
    assert cs.restart_count == 1
    assert cs.last_state is not None and cs.last_state.terminated is not None
    assert (cs.last_state.terminated.reason, cs.last_state.terminated.exit_code) == (
        "OOMKilled",
        137,
    )


@pytest.mark.parametrize(
    ("policy", "codes", "phase", "reason"),
    [
        ("Never", (0, 0), "Succeeded", "Completed"),
        ("Never", (0, 1), "Failed", "Error"),
        ("OnFailure", (0, 0), "Succeeded", "Completed"),
    ],
)
def test_run_to_completion_phases(
    policy: str, codes: tuple[int, int], phase: str, reason: str
) -> None:
    records = [
        rec(f"c{i}", name=n, state=RunState.EXITED, exit_code=code, finished_at=T0 + 3)
        for i, (n, code) in enumerate(zip(("a", "b"), codes, strict=True))
    ]
    stopped_sandbox = rec("sb", name="", state=RunState.EXITED, exit_code=137)
    observed = observed_instance(UID_, [stopped_sandbox, *records])
    previous = compute_instance_status(
        instance(policy, ("a", "b")),
        observed_instance(UID_, [SANDBOX]),
        inputs(),
        previous=None,
    )
    status = compute_instance_status(
        instance(policy, ("a", "b")), observed, inputs(), previous=previous
    )
    assert (status.phase, status.reason) == (phase, reason)
    # The sandbox is gone but the instance keeps the address it had.
    assert status.instance_ip == "10.244.1.9"


def test_steady_conditions_keep_their_transition_time_and_compare_equal() -> None:
    observed = observed_instance(UID_, [SANDBOX, rec("c1")])
    first = compute_instance_status(instance(), observed, inputs(), previous=None)
    later = compute_instance_status(
        instance(), observed, StatusInputs(host_ip="192.168.50.2", now=T0 + 500), previous=first
    )
    assert later.to_dict() == first.to_dict()
