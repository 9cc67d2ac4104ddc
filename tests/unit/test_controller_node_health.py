"""Node lifecycle decisions: lease expiry, eviction, releasing a dead agent's finalizers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kopflet.api import Instance, NodeAgent
from kopflet.controller.node_health import plan_node_health

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
GRACE, EVICTION = 40.0, 30.0


def stamp(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def node(*, ready: str | None = "True", since: float = 600) -> NodeAgent:
    status: dict[str, Any] = {}
    if ready is not None:
        status["conditions"] = [
            {
                "type": "Ready",
                "status": ready,
                "reason": "AgentReady",
                "lastTransitionTime": stamp(since),
            }
        ]
    return NodeAgent.from_dict(
        {"metadata": {"name": "n1", "creationTimestamp": stamp(3600)}, "status": status}
    )


def instance(
    name: str, *, deleted_ago: float | None = None, grace: int = 30, finalizer: bool = True
) -> Instance:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "uid": name}
    if finalizer:
        meta["finalizers"] = ["kopflet.dev/agent", "example.com/keep"]
    if deleted_ago is not None:
        # deletionTimestamp is the delete time plus the grace period, as the API server sets it
        meta["deletionTimestamp"] = stamp(deleted_ago - grace)
        meta["deletionGracePeriodSeconds"] = grace
    return Instance.from_dict(
        {"metadata": meta, "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]}}
    )


def plan(n: NodeAgent, age: float, instances: list[Instance]) -> Any:
    return plan_node_health(
        n,
        heartbeat_age=age,
        instances=instances,
        now=NOW,
        grace_period=GRACE,
        eviction_timeout=EVICTION,
    )


def test_a_fresh_heartbeat_changes_nothing_and_asks_to_look_again_at_expiry() -> None:
    p = plan(node(), 10, [instance("a")])
    assert (p.mark_unknown, p.evict, p.force_finalize) == (None, (), ())
    assert p.requeue_after == pytest.approx(30)


def test_an_expired_lease_marks_the_node_unknown_and_schedules_the_eviction() -> None:
    p = plan(node(), 41, [instance("a")])
    assert p.mark_unknown is not None and "41s" in p.mark_unknown
    assert p.evict == ()
    assert p.requeue_after == pytest.approx(EVICTION)


def test_a_node_already_unknown_is_not_marked_again_and_is_evicted_after_the_timeout() -> None:
    p = plan(node(ready="Unknown", since=31), 71, [instance("a"), instance("b")])
    assert p.mark_unknown is None
    assert [i.metadata.name for i in p.evict] == ["a", "b"]


def test_an_agent_reporting_not_ready_also_gets_its_instances_evicted() -> None:
    p = plan(node(ready="False", since=29), 1, [instance("a")])
    assert p.evict == () and p.requeue_after == pytest.approx(1)
    p = plan(node(ready="False", since=30), 1, [instance("a")])
    assert [i.metadata.name for i in p.evict] == ["a"]


def test_a_live_agent_reporting_not_ready_gets_the_longer_not_ready_timeout() -> None:
    def longer(n: NodeAgent, age: float) -> Any:
        return plan_node_health(
            n,
            heartbeat_age=age,
            instances=[instance("a")],
            now=NOW,
            grace_period=GRACE,
            eviction_timeout=EVICTION,
            not_ready_eviction_timeout=300.0,
        )

    # Lease renewed, engine down: its containers may be running; wait as Kubernetes does.
    assert longer(node(ready="False", since=60), 1).evict == ()
    assert longer(node(ready="False", since=299), 1).evict == ()
    assert [i.metadata.name for i in longer(node(ready="False", since=300), 1).evict] == ["a"]
    # Unreachable (Unknown): the short timeout, whatever the agent said before.
    assert [i.metadata.name for i in longer(node(ready="Unknown", since=31), 71).evict] == ["a"]
    marked = longer(node(ready="False", since=60), 41)  # stopped renewing too
    assert marked.mark_unknown is not None and marked.requeue_after == pytest.approx(EVICTION)


def test_evicted_instances_lose_the_agents_finalizer_after_the_eviction_timeout() -> None:
    waiting = instance("young", deleted_ago=10)
    due = instance("old", deleted_ago=31)
    p = plan(node(ready="Unknown", since=100), 100, [waiting, due])
    assert [i.metadata.name for i in p.force_finalize] == ["old"]
    assert p.requeue_after == pytest.approx(20)


def test_a_ready_node_keeps_its_terminating_instances_for_its_agent() -> None:
    p = plan(node(), 1, [instance("a", deleted_ago=3600)])
    assert p.force_finalize == ()


def test_instances_without_the_agents_finalizer_need_no_release() -> None:
    p = plan(
        node(ready="Unknown", since=100), 100, [instance("a", deleted_ago=60, finalizer=False)]
    )
    assert p.force_finalize == ()
