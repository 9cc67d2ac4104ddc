"""One of our containers as the engine would report it, for the runtime's unit tests."""

from __future__ import annotations

from kopflet.agent.runtime.labels import ContainerID, ContainerLabels, ContainerRole
from kopflet.agent.runtime.records import ContainerRecord, RunState
from kopflet.api import UID


def app_labels(uid: str) -> ContainerLabels:
    """The labels of the app container ``main`` of instance ``uid``."""
    return ContainerLabels(
        role=ContainerRole.APP,
        node="n",
        instance_uid=UID(uid),
        instance_name="i",
        instance_namespace="d",
        container_name="main",
        spec_hash="h",
        restart_count=0,
        grace_period_seconds=1,
    )


def record(cid: str, uid: str, state: RunState) -> ContainerRecord:
    """The app container ``main`` of instance ``uid``, in ``state``."""
    return ContainerRecord(
        id=ContainerID(cid),
        labels=app_labels(uid),
        state=state,
        image="i",
        image_id="",
        created_at=0,
    )
