"""Docker inspect output and event messages into records (what `docker inspect` really says)."""

from __future__ import annotations

from typing import Any

import pytest

from kopflet.agent.runtime.container_runtime import EventKind
from kopflet.agent.runtime.docker_records import event_from, parse_docker_time, record_from_inspect
from kopflet.agent.runtime.labels import ContainerLabels, ContainerRole
from kopflet.agent.runtime.records import RunState
from kopflet.api import UID

pytestmark = pytest.mark.unit

LABELS = ContainerLabels(
    role=ContainerRole.APP,
    node="n",
    instance_uid=UID("u"),
    instance_name="web",
    instance_namespace="default",
    container_name="main",
    spec_hash="h",
    restart_count=2,
    grace_period_seconds=30,
)


def inspect(state: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "Id": "abc",
        "Created": "2026-01-01T00:00:00.123456789Z",
        "Image": "sha256:img",
        "Config": {"Image": "kopflet/busybox:test"},
        "HostConfig": {"NetworkMode": "container:sandbox1"},
        "NetworkSettings": {"Networks": {}},
        "State": {"StartedAt": "0001-01-01T00:00:00Z", "FinishedAt": "0001-01-01T00:00:00Z"}
        | state,
        **extra,
    }


def test_docker_times_keep_microseconds_and_the_zero_time_is_none() -> None:
    assert parse_docker_time("2026-01-01T00:00:01.500000999Z") == 1_767_225_601.5
    assert parse_docker_time("2026-01-01T00:00:01Z") == 1_767_225_601.0
    assert parse_docker_time("0001-01-01T00:00:00Z") is None


def test_exited_container_carries_exit_code_oom_and_times() -> None:
    record = record_from_inspect(
        inspect(
            {
                "Status": "exited",
                "ExitCode": 137,
                "OOMKilled": True,
                "StartedAt": "2026-01-01T00:00:01Z",
                "FinishedAt": "2026-01-01T00:00:04Z",
            }
        ),
        LABELS,
    )
    assert (record.state, record.exit_code, record.oom_killed, record.run_seconds) == (
        RunState.EXITED,
        137,
        True,
        3.0,
    )
    assert record.sandbox_id == "sandbox1" and record.restart_count == 2


def test_refused_start_is_an_exit_not_a_pending_create() -> None:
    state = {"Status": "created", "ExitCode": 127, "Error": 'exec: "nope": not found'}
    record = record_from_inspect(inspect(state), LABELS)
    assert (record.state, record.exit_code, record.error) == (
        RunState.EXITED,
        127,
        'exec: "nope": not found',
    )


def test_sandbox_reports_its_address() -> None:
    networks = {"Networks": {"kopflet": {"IPAddress": "10.244.1.7"}}}
    record = record_from_inspect(
        inspect({"Status": "running"}, NetworkSettings=networks, HostConfig={}), LABELS
    )
    assert (record.state, record.ip, record.sandbox_id, record.exit_code) == (
        RunState.RUNNING,
        "10.244.1.7",
        None,
        None,
    )


def test_only_our_start_die_oom_events_become_runtime_events() -> None:
    ours = {"Action": "die", "Actor": {"ID": "abc", "Attributes": LABELS.render()}}
    event = event_from(ours)
    assert event is not None and (event.kind, event.instance_uid) == (EventKind.DIE, "u")
    assert event_from({"Action": "die", "Actor": {"ID": "x", "Attributes": {}}}) is None
    assert event_from({"Action": "rename", "Actor": ours["Actor"]}) is None


def test_an_event_tells_when_the_engine_logged_it_never_too_early() -> None:
    actor = {"ID": "abc", "Attributes": LABELS.render()}
    timed = event_from({"Action": "start", "Actor": actor, "timeNano": 1_700_000_000_250_000_000})
    assert timed is not None and timed.at == pytest.approx(1_700_000_000.25)
    # Whole seconds only: the end of that second, a bound the change came no later than.
    coarse = event_from({"Action": "start", "Actor": actor, "time": 1_700_000_000})
    assert coarse is not None and coarse.at == 1_700_000_001.0
    untimed = event_from({"Action": "start", "Actor": actor})
    assert untimed is not None and untimed.at is None
