"""Docker's JSON (``inspect`` output, event messages) into our records. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from kopflet.agent.runtime.container_runtime import EventKind, RuntimeEvent
from kopflet.agent.runtime.labels import ContainerID, ContainerLabels
from kopflet.agent.runtime.records import ContainerRecord, RunState

_ZERO_TIME_PREFIX: Final = "0001-01-01"
_STATES: Final = {
    "created": RunState.CREATED,
    "running": RunState.RUNNING,
    "exited": RunState.EXITED,
}


def run_state_of(status: str) -> RunState:
    """A state as the engine's listing (``State``) or inspect (``State.Status``) names it."""
    return _STATES.get(status, RunState.UNKNOWN)


def parse_docker_time(value: str | None) -> float | None:
    """Docker's UTC RFC 3339 with nanoseconds as epoch seconds; ``None`` for its zero time."""
    if not value or value.startswith(_ZERO_TIME_PREFIX):
        return None
    head, _, frac = value.rstrip("Z").partition(".")
    digits = "".join(ch for ch in frac if ch.isdigit())[:6]
    return datetime.fromisoformat(f"{head}.{digits or '0'}+00:00").timestamp()


def _network_ip(settings: Mapping[str, Any] | None) -> str | None:
    networks = (settings or {}).get("Networks") or {}
    return next((n.get("IPAddress") for n in networks.values() if n.get("IPAddress")), None)


def listed_ip(summary: Mapping[str, Any]) -> str:
    """The address of a running container as the engine's listing shows it, else empty."""
    return _network_ip(summary.get("NetworkSettings")) or ""


def record_from_inspect(data: Mapping[str, Any], labels: ContainerLabels) -> ContainerRecord:
    """The observed record of one container, from ``docker inspect`` output."""
    state = data.get("State") or {}
    run_state = _STATES.get(str(state.get("Status", "")), RunState.UNKNOWN)
    error = str(state.get("Error") or "")
    if run_state is RunState.CREATED and error:
        # A start the engine refused leaves the container "created" with the reason set;
        # for restart decisions that is a failed run, not a pending one.
        run_state = RunState.EXITED
    ip = _network_ip(data.get("NetworkSettings"))
    mode = str((data.get("HostConfig") or {}).get("NetworkMode") or "")
    joined = mode.removeprefix("container:") if mode.startswith("container:") else None
    return ContainerRecord(
        id=ContainerID(data["Id"]),
        labels=labels,
        state=run_state,
        image=str((data.get("Config") or {}).get("Image") or ""),
        image_id=str(data.get("Image") or ""),
        created_at=parse_docker_time(data.get("Created")) or 0.0,
        started_at=parse_docker_time(state.get("StartedAt")),
        finished_at=parse_docker_time(state.get("FinishedAt")),
        exit_code=state.get("ExitCode") if run_state is RunState.EXITED else None,
        oom_killed=bool(state.get("OOMKilled")),
        error=error,
        ip=ip,
        sandbox_id=ContainerID(joined) if joined else None,
    )


def event_from(message: Mapping[str, Any]) -> RuntimeEvent | None:
    """One of our start/die/oom events from the engine's event stream, else ``None``."""
    actor = message.get("Actor") or {}
    labels = ContainerLabels.parse(actor.get("Attributes"))
    try:
        kind = EventKind(message.get("Action") or message.get("status") or "")
    except ValueError:
        return None
    if labels is None:
        return None
    return RuntimeEvent(
        kind=kind,
        container_id=ContainerID(actor.get("ID", "")),
        instance_uid=labels.instance_uid,
        at=_event_time(message),
    )


def _event_time(message: Mapping[str, Any]) -> float | None:
    """``timeNano`` as epoch seconds; else the whole-second ``time``, rounded up: the time
    is a bound the change came no later than, never one that is too early."""
    nanos = message.get("timeNano")
    if isinstance(nanos, int) and nanos > 0:
        return nanos / 1e9
    seconds = message.get("time")
    if isinstance(seconds, int) and seconds > 0:
        return float(seconds + 1)
    return None
