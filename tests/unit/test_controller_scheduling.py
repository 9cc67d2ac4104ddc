"""The scheduler: filters and their reasons, scores, and binding bursts that never overcommit."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from kopflet.api import Instance, NodeAgent
from kopflet.api.constants import AGENT_FINALIZER, NODE_NAME_LABEL
from kopflet.controller import scheduler as scheduler_module
from kopflet.controller.cluster_cache import ClusterCache
from kopflet.controller.events import EventRecorder
from kopflet.controller.instance_state import (
    NO_REQUESTS,
    NodeName,
    ObjectKey,
    Requests,
    requests_of,
)
from kopflet.controller.kube_api import Conflict, JsonObject
from kopflet.controller.node_usage import NodeUsage
from kopflet.controller.scheduler import Scheduler, bind_patch
from kopflet.controller.scheduling import (
    Capacity,
    NodeSnapshot,
    capacity_of,
    choose_node,
)

pytestmark = pytest.mark.unit

MI = 1024 * 1024


def node(
    name: str,
    *,
    cpu: int | None = 4000,
    memory: int | None = 4096 * MI,
    ready: bool = True,
    unschedulable: bool = False,
    labels: dict[str, str] | None = None,
    used: Requests = NO_REQUESTS,
    per_owner: dict[str, int] | None = None,
) -> NodeSnapshot:
    return NodeSnapshot(
        name=NodeName(name),
        labels=labels or {"pool": "a"},
        ready=ready,
        unschedulable=unschedulable,
        allocatable=Capacity(cpu_millis=cpu, memory_bytes=memory, instances=110),
        used=used,
        per_owner=per_owner or {},
    )


WANT = Requests(cpu_millis=100, memory_bytes=256 * MI, instances=1)


def test_no_fit_explains_each_node_in_the_message() -> None:
    decision = choose_node(
        wanted=WANT,
        node_selector={"pool": "a"},
        owner_uid=None,
        nodes=[
            node("full-1", memory=100 * MI),
            node("full-2", memory=200 * MI),
            node("down", ready=False),
        ],
        seed="x",
    )
    assert decision.node is None
    assert decision.message == "0/3 nodes available: 2 insufficient memory, 1 not ready"


def test_every_filter_has_its_reason() -> None:
    decision = choose_node(
        wanted=WANT,
        node_selector={"pool": "a"},
        owner_uid=None,
        nodes=[
            node("cordoned", unschedulable=True),
            node("other-pool", labels={"pool": "b"}),
            node("no-cpu", cpu=50, memory=100 * MI),
        ],
        seed="x",
    )
    assert decision.message == (
        "0/3 nodes available: 1 didn't match node selector, 1 insufficient cpu,"
        " 1 insufficient memory, 1 unschedulable"
    )


def test_requests_count_what_is_already_bound() -> None:
    busy = node("busy", memory=1024 * MI, used=Requests(0, 900 * MI, 3))
    decision = choose_node(wanted=WANT, node_selector=None, owner_uid=None, nodes=[busy], seed="x")
    assert decision.node is None and decision.reasons == {"insufficient memory": 1}


def test_least_allocated_node_wins() -> None:
    decision = choose_node(
        wanted=WANT,
        node_selector=None,
        owner_uid=None,
        nodes=[node("half", used=Requests(2000, 2048 * MI, 10)), node("empty")],
        seed="x",
    )
    assert decision.node == "empty"


def test_one_workload_spreads_over_equal_nodes() -> None:
    decision = choose_node(
        wanted=WANT,
        node_selector=None,
        owner_uid="wl",
        nodes=[node("has-two", per_owner={"wl": 2}), node("has-none")],
        seed="x",
    )
    assert decision.node == "has-none"


def test_capacity_reads_allocatable_quantities() -> None:
    agent = NodeAgent.from_dict(
        {
            "metadata": {"name": "n"},
            "status": {"allocatable": {"cpu": "1500m", "memory": "2Gi", "instances": "8"}},
        }
    )
    assert capacity_of(agent) == Capacity(cpu_millis=1500, memory_bytes=2048 * MI, instances=8)


# --- the scheduler loop against a fake API -------------------------------------------------


class SlowBinder:
    """Records binds; answers slowly so that many are in flight at once."""

    def __init__(self) -> None:
        self.bound: Counter[str] = Counter()
        self.seen: list[str] = []
        self.status_writes = 0
        self.refuse: set[str] = set()
        self.patches: list[Any] = []

    async def merge_patch(self, path: str, patch: Any) -> JsonObject:
        await asyncio.sleep(0.01)
        name = path.split("/")[-1] if not path.endswith("/status") else path.split("/")[-2]
        if path.endswith("/status"):
            self.status_writes += 1
            return {}
        if name in self.refuse:
            raise Conflict(409, "Conflict", "changed")
        self.seen.append(name)
        self.patches.append(patch)
        self.bound[patch["spec"]["nodeName"]] += 1
        return {"metadata": {"resourceVersion": "2"}}

    async def create(self, path: str, body: Any) -> JsonObject:
        return {}

    async def get(self, path: str) -> JsonObject:
        return {}

    async def list(self, path: str, **_: Any) -> list[JsonObject]:
        return []

    async def delete(self, path: str, **_: Any) -> JsonObject:
        return {}


def agent(name: str, *, memory: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"pool": "a"}},
        "status": {
            "allocatable": {"cpu": "100", "memory": memory, "instances": "100"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def unbound(n: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"i-{n}",
            "namespace": "ns",
            "uid": f"u-{n}",
            "resourceVersion": "1",
            "creationTimestamp": f"2026-01-01T00:00:{n:02d}Z",
        },
        "spec": {
            "nodeSelector": {"pool": "a"},
            "containers": [
                {"name": "c", "image": "i", "resources": {"requests": {"memory": "16Mi"}}}
            ],
        },
    }


def bound_to(n: int, node_name: str) -> dict[str, Any]:
    body = unbound(n)
    body["spec"]["nodeName"] = node_name
    return body


def test_a_burst_of_binds_in_flight_never_overcommits_a_node() -> None:
    async def scenario() -> SlowBinder:
        api = SlowBinder()
        cache = ClusterCache.from_objects(
            nodes=[agent("small", memory="160Mi"), agent("tiny", memory="32Mi")],
            instances=[unbound(n) for n in range(25)],
        )
        scheduler = Scheduler(lambda: cache, api, EventRecorder(api, instance="test"))
        # Several passes while the binds are still in flight and the cache still shows every
        # Instance unbound: the assumed bindings must keep them from being decided twice.
        for _ in range(3):
            await scheduler.schedule_pending()
        await asyncio.sleep(0.3)
        return api

    api = asyncio.run(scenario())
    assert api.bound == {"small": 10, "tiny": 2}
    assert len(api.seen) == len(set(api.seen)) == 12


def test_the_bind_puts_the_agents_finalizer_on_with_the_node() -> None:
    bare = Instance.from_dict(unbound(1))
    assert bind_patch(bare, NodeName("n1")) == {
        "metadata": {
            "resourceVersion": "1",
            "labels": {NODE_NAME_LABEL: "n1"},
            "finalizers": [AGENT_FINALIZER],
        },
        "spec": {"nodeName": "n1"},
    }
    # A merge patch replaces the list: others' finalizers are kept, in their order, and the
    # resourceVersion precondition makes sure the list is the one the patch was made from.
    theirs = unbound(2)
    theirs["metadata"]["finalizers"] = ["example.com/keep", "example.com/also"]
    patch = bind_patch(Instance.from_dict(theirs), NodeName("n1"))
    assert patch["metadata"]["finalizers"] == [
        "example.com/keep",
        "example.com/also",
        AGENT_FINALIZER,
    ]
    # Already there (put on by hand, say): the list is left alone.
    held = unbound(3)
    held["metadata"]["finalizers"] = [AGENT_FINALIZER]
    assert "finalizers" not in bind_patch(Instance.from_dict(held), NodeName("n1"))["metadata"]


def test_every_bind_of_a_pass_carries_the_agents_finalizer() -> None:
    async def scenario() -> SlowBinder:
        api = SlowBinder()
        cache = ClusterCache.from_objects(
            nodes=[agent("one", memory="1Gi")], instances=[unbound(n) for n in range(3)]
        )
        scheduler = Scheduler(lambda: cache, api, EventRecorder(api, instance="test"))
        await scheduler.schedule_pending()
        await asyncio.sleep(0.1)
        return api

    api = asyncio.run(scenario())
    assert len(api.patches) == 3
    assert all(p["metadata"]["finalizers"] == [AGENT_FINALIZER] for p in api.patches)


def test_a_refused_bind_frees_its_capacity_for_the_next_pass() -> None:
    async def scenario() -> SlowBinder:
        api = SlowBinder()
        api.refuse = {"i-0"}
        nodes = [agent("one", memory="16Mi")]
        caches = [ClusterCache.from_objects(nodes=nodes, instances=[unbound(0), unbound(1)])]
        scheduler = Scheduler(lambda: caches[-1], api, EventRecorder(api, instance="test"))
        await scheduler.schedule_pending()
        await asyncio.sleep(0.1)
        # i-0 was deleted meanwhile (hence the refusal); the watch has caught up.
        caches.append(ClusterCache.from_objects(nodes=nodes, instances=[unbound(1)]))
        await scheduler.schedule_pending()
        await asyncio.sleep(0.1)
        return api

    api = asyncio.run(scenario())
    assert api.seen == ["i-1"]  # i-0's bind was refused, then i-1 got the room


def test_node_usage_counts_each_instance_once_however_often_it_is_seen() -> None:
    usage = NodeUsage(requests_of)
    bound = Instance.from_dict(bound_to(1, "n1"))
    usage.observe("u-1", bound)
    usage.observe("u-1", bound)  # the same state again, from a rebuild or a repeated event
    usage.rebuild([bound])
    assert usage.used("n1") == Requests(cpu_millis=0, memory_bytes=16 * MI, instances=1)
    usage.observe("u-1", None)  # deleted
    assert usage.used("n1") == Requests(0, 0, 0) and "u-1" not in usage


# --- parked: an unschedulable Instance waits for something that could make room ------------


def test_an_unschedulable_instance_is_not_tried_again_until_something_changes() -> None:
    async def scenario() -> tuple[list[int], SlowBinder, Scheduler]:
        api = SlowBinder()
        cache = ClusterCache.from_objects(
            nodes=[agent("one", memory="8Mi")], instances=[unbound(0)]
        )
        scheduler = Scheduler(lambda: cache, api, EventRecorder(api, instance="test"))
        tried = [await scheduler.schedule_pending()]
        # Events of other objects wake the loop; none could make room: it stays parked.
        tried += [await scheduler.schedule_pending(), await scheduler.schedule_pending()]
        parked = scheduler.parked
        scheduler.nodes_changed()  # a NodeAgent event: tried again, and parked again
        tried.append(await scheduler.schedule_pending())
        tried.append(parked)
        return tried, api, scheduler

    tried, api, scheduler = asyncio.run(scenario())
    assert tried == [1, 0, 0, 1, 1]
    assert api.status_writes == 2  # Scheduled=False, once per try: the cache never caught up
    assert scheduler.parked == 1


def test_room_freed_on_a_node_wakes_what_is_parked() -> None:
    async def scenario() -> SlowBinder:
        api = SlowBinder()
        nodes = [agent("one", memory="16Mi")]
        caches = [
            ClusterCache.from_objects(nodes=nodes, instances=[bound_to(0, "one"), unbound(1)])
        ]
        scheduler = Scheduler(lambda: caches[-1], api, EventRecorder(api, instance="test"))
        assert await scheduler.schedule_pending() == 1  # i-1 tried: no room, parked
        assert await scheduler.schedule_pending() == 0
        # i-0 is deleted; the watch's event is indexed, then observed.
        caches.append(ClusterCache.from_objects(nodes=nodes, instances=[unbound(1)]))
        scheduler.observe("u-0", ObjectKey("ns", "i-0"))
        assert await scheduler.schedule_pending() == 1
        await asyncio.sleep(0.1)
        return api

    api = asyncio.run(scenario())
    assert api.seen == ["i-1"]


def test_its_own_spec_change_or_the_retry_period_tries_it_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> list[int]:
        api = SlowBinder()
        nodes = [agent("one", memory="8Mi")]
        caches = [ClusterCache.from_objects(nodes=nodes, instances=[unbound(0)])]
        scheduler = Scheduler(lambda: caches[-1], api, EventRecorder(api, instance="test"))
        tried = [await scheduler.schedule_pending(), await scheduler.schedule_pending()]
        changed = unbound(0)
        changed["metadata"]["generation"] = 2
        caches.append(ClusterCache.from_objects(nodes=nodes, instances=[changed]))
        tried += [await scheduler.schedule_pending(), await scheduler.schedule_pending()]
        monkeypatch.setattr(scheduler_module, "RETRY_SECONDS", 0.05)
        await asyncio.sleep(0.06)
        tried.append(await scheduler.schedule_pending())
        return tried

    assert asyncio.run(scenario()) == [1, 0, 1, 0, 1]


def test_node_usage_says_when_room_was_given_back() -> None:
    usage = NodeUsage(requests_of)
    on_n1 = Instance.from_dict(bound_to(1, "n1"))
    assert usage.observe("u-1", Instance.from_dict(unbound(1))) is False  # not bound yet
    assert usage.observe("u-1", on_n1) is False  # bound: takes room, gives none back
    assert usage.observe("u-1", on_n1) is False  # the same again
    finished = bound_to(1, "n1")
    finished["status"] = {"phase": "Succeeded"}
    assert usage.observe("u-1", Instance.from_dict(finished)) is True
    assert usage.observe("u-1", on_n1) is False
    assert usage.observe("u-1", None) is True  # deleted
    assert usage.observe("u-1", None) is False
