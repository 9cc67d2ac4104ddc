"""One of our containers as the engine would report it, for the runtime's unit tests."""

from __future__ import annotations

from kopflet.agent.runtime.labels import ContainerID, ContainerLabels, ContainerRole
from kopflet.agent.runtime.records import ContainerRecord, RunState
from kopflet.api import UID


def record(cid: str, uid: str, state: RunState) -> ContainerRecord:
    """The app container ``main`` of instance ``uid``, in ``state``."""
    labels = ContainerLabels(
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
    return ContainerRecord(
        id=ContainerID(cid), labels=labels, state=state, image="i", image_id="", created_at=0
    )
