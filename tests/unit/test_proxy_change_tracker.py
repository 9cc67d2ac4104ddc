"""Change trackers: previous/current per key, cancelling updates dropped."""

from __future__ import annotations

import pytest

from kopflet.agent.proxy.change_tracker import (
    Change,
    ChangeTracker,
    NodeChangeTracker,
    ServiceChangeTracker,
)
from kopflet.agent.proxy.model import NodeName, NodeRoute, ServicePortInfo, ServicePortName

pytestmark = pytest.mark.unit

A = ServicePortName("ns", "svc", "a")
B = ServicePortName("ns", "svc", "b")
INFO1 = ServicePortInfo(cluster_ip="10.96.0.1", port=80, protocol="TCP")
INFO2 = ServicePortInfo(cluster_ip="10.96.0.1", port=8080, protocol="TCP")


def test_an_update_keeps_the_first_previous_and_the_last_current() -> None:
    tracker: ChangeTracker[str, int] = ChangeTracker()
    tracker.update("k", 1)
    assert tracker.drain() == {"k": Change(None, 1)}
    tracker.update("k", 2)
    tracker.update("k", 3)
    assert tracker.drain() == {"k": Change(1, 3)}
    assert tracker.applied == {"k": 3}


def test_an_update_back_to_the_previous_value_cancels_out() -> None:
    tracker: ChangeTracker[str, int] = ChangeTracker()
    tracker.update("k", 1)
    tracker.drain()
    tracker.update("k", 2)
    tracker.update("k", 1)
    assert not tracker.has_pending
    assert tracker.drain() == {}


def test_add_then_delete_before_a_sync_leaves_nothing() -> None:
    tracker: ChangeTracker[str, int] = ChangeTracker()
    tracker.update("k", 1)
    tracker.update("k", None)
    assert tracker.drain() == {}
    assert tracker.applied == {}


def test_a_deletion_drains_as_previous_without_current() -> None:
    tracker: ChangeTracker[str, int] = ChangeTracker()
    tracker.update("k", 1)
    tracker.drain()
    tracker.update("k", None)
    assert tracker.keys() == set()
    assert tracker.drain() == {"k": Change(1, None)}
    assert "k" not in tracker.applied


def test_service_update_replaces_all_ports_of_the_service() -> None:
    tracker = ServiceChangeTracker()
    tracker.update_service(("ns", "svc"), {A: INFO1, B: INFO1})
    tracker.drain()
    tracker.update_service(("ns", "svc"), {A: INFO2})
    assert tracker.drain() == {A: Change(INFO1, INFO2), B: Change(INFO1, None)}
    tracker.update_service(("ns", "svc"), {})
    assert tracker.drain() == {A: Change(INFO2, None)}


def test_an_unchanged_service_event_records_nothing() -> None:
    tracker = ServiceChangeTracker()
    tracker.update_service(("ns", "svc"), {A: INFO1})
    tracker.drain()
    tracker.update_service(("ns", "svc"), {A: INFO1})
    assert not tracker.has_pending


def test_other_services_are_untouched_by_an_update() -> None:
    other = ServicePortName("ns", "other", "a")
    tracker = ServiceChangeTracker()
    tracker.update_service(("ns", "svc"), {A: INFO1})
    tracker.update_service(("ns", "other"), {other: INFO1})
    tracker.drain()
    tracker.update_service(("ns", "svc"), {})
    assert set(tracker.drain()) == {A}
    assert set(tracker.applied) == {other}


def test_node_tracker_records_a_node_losing_its_route() -> None:
    tracker = NodeChangeTracker()
    route = NodeRoute(NodeName("b"), "10.244.2.0/24", "172.30.0.12")
    tracker.update_nodes([(NodeName("b"), route)])
    tracker.drain()
    tracker.update_nodes([(NodeName("b"), None)])
    assert tracker.drain() == {NodeName("b"): Change(route, None)}
