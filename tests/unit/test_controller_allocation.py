"""Address pools and the allocator: unique values under concurrency, even across two
controllers, kept across restarts, conflicts named, stale records repaired."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from kopflet.controller.address_pools import (
    AddressPool,
    PortPool,
    SubnetPool,
    allocation_name,
    free_values,
)
from kopflet.controller.allocator import Allocator, Holder
from kopflet.controller.kube_api import AlreadyExists, Conflict, JsonObject, NotFound

pytestmark = pytest.mark.unit


def test_address_pool_skips_network_and_broadcast() -> None:
    pool = AddressPool.parse("10.96.0.0/30")
    assert pool.size == 2
    assert [pool.value_at(i) for i in range(2)] == ["10.96.0.1", "10.96.0.2"]
    assert "10.96.0.0" not in pool and "10.96.0.3" not in pool and "10.96.0.2" in pool
    assert "not-an-ip" not in pool


def test_subnet_pool_cuts_the_cluster_cidr_into_node_subnets() -> None:
    pool = SubnetPool.parse("10.244.0.0/16", 24)
    assert pool.size == 256
    assert pool.value_at(3) == "10.244.3.0/24"
    assert "10.244.3.0/24" in pool and "10.244.3.0/25" not in pool and "10.245.0.0/24" not in pool
    with pytest.raises(ValueError):
        SubnetPool.parse("10.244.0.0/16", 8)


def test_port_pool_parses_a_range() -> None:
    pool = PortPool.parse("30000-32767")
    assert pool.size == 2768 and "30000" in pool and "32768" not in pool
    with pytest.raises(ValueError):
        PortPool.parse("0-10")


def test_free_values_start_at_the_cursor_and_wrap_around() -> None:
    pool = PortPool.parse("1-5")
    assert [v for _, v in free_values(pool, {"4"}, start=2)] == ["3", "5", "1", "2"]


def test_allocation_names_are_the_values() -> None:
    assert allocation_name("clusterip", "10.96.0.12") == "clusterip-10-96-0-12"
    assert allocation_name("instancecidr", "10.244.3.0/24") == "instancecidr-10-244-3-0-24"


class RecordStore:
    """The API server's behaviour that matters here: names are unique, deletes can be
    conditional on the uid, every call takes a moment (so calls interleave)."""

    def __init__(self) -> None:
        self.objects: dict[str, JsonObject] = {}
        self._uids = itertools.count()

    @staticmethod
    def _name(path: str) -> str:
        return path.rsplit("/", 1)[-1]

    async def create(self, path: str, body: Any) -> JsonObject:
        await asyncio.sleep(0.001)
        name = body["metadata"]["name"]
        if name in self.objects:
            raise AlreadyExists(409, "AlreadyExists", name)
        obj = {**body, "metadata": {**body["metadata"], "uid": f"r{next(self._uids)}"}}
        self.objects[name] = obj
        return obj

    async def get(self, path: str) -> JsonObject:
        await asyncio.sleep(0.001)
        try:
            return self.objects[self._name(path)]
        except KeyError:
            raise NotFound(404, "NotFound", path) from None

    async def list(self, path: str, **_: Any) -> list[JsonObject]:
        return list(self.objects.values())

    async def delete(self, path: str, *, uid: str | None = None, **_: Any) -> JsonObject:
        name = self._name(path)
        obj = self.objects.get(name)
        if obj is None:
            raise NotFound(404, "NotFound", name)
        if uid and obj["metadata"]["uid"] != uid:
            raise Conflict(409, "Conflict", "uid precondition")
        del self.objects[name]
        return {}

    async def merge_patch(self, path: str, patch: Any) -> JsonObject:
        raise AssertionError("the allocator never patches")


def holder(n: int) -> Holder:
    return Holder(kind="ProxyService", namespace="ns", name=f"svc-{n}", uid=f"uid-{n}")


POOL = AddressPool.parse("10.96.0.0/24")


def test_concurrent_allocations_by_two_controllers_are_all_distinct() -> None:
    async def scenario() -> tuple[list[str | None], RecordStore]:
        store = RecordStore()
        first, second = Allocator(store), Allocator(store)
        await first.load()
        await second.load()
        results = await asyncio.gather(
            *(
                (first if n % 2 else second).allocate("clusterip", POOL, holder=holder(n))
                for n in range(200)
            )
        )
        return list(results), store

    results, store = asyncio.run(scenario())
    assert None not in results and len(set(results)) == 200
    assert len(store.objects) == 200


def test_a_restarted_allocator_sees_every_allocation_and_never_hands_one_out_twice() -> None:
    async def scenario() -> tuple[str | None, str | None, str | None]:
        store = RecordStore()
        before = Allocator(store)
        await before.load()
        taken = await before.allocate("clusterip", POOL, holder=holder(1))
        after = Allocator(store)
        await after.load()
        again = await after.allocate("clusterip", POOL, holder=holder(1))  # its spec write was lost
        fresh = await after.allocate("clusterip", POOL, holder=holder(2))
        return taken, again, fresh

    taken, again, fresh = asyncio.run(scenario())
    assert again == taken and fresh != taken


def test_a_requested_value_held_by_another_is_refused_with_its_holder() -> None:
    async def scenario() -> tuple[Holder | None, Holder | None]:
        store = RecordStore()
        allocator = Allocator(store)
        await allocator.load()
        granted = await allocator.claim("nodeport", "30080", holder=holder(1))
        refused = await allocator.claim("nodeport", "30080", holder=holder(2))
        return granted, refused

    granted, refused = asyncio.run(scenario())
    assert granted is None and refused == holder(1)


def test_a_recreated_object_of_the_same_name_takes_over_its_old_records() -> None:
    async def scenario() -> Holder | None:
        store = RecordStore()
        allocator = Allocator(store)
        await allocator.load()
        await allocator.claim("clusterip", "10.96.0.9", holder=holder(1))
        reborn = Holder(kind="ProxyService", namespace="ns", name="svc-1", uid="new-uid")
        return await allocator.claim("clusterip", "10.96.0.9", holder=reborn)

    assert asyncio.run(scenario()) is None


def test_repair_releases_only_records_no_holder_uses() -> None:
    async def scenario() -> tuple[int, set[str]]:
        store = RecordStore()
        allocator = Allocator(store)
        for n in range(3):
            await allocator.claim("clusterip", f"10.96.0.{n + 1}", holder=holder(n))

        async def still_used(h: Holder, kind: str, value: str) -> bool:
            return h != holder(1)

        assert await allocator.repair(still_used) == 0  # too young: spec writes may be in flight
        removed = await allocator.repair(still_used, min_age=0)
        return removed, set(store.objects)

    removed, left = asyncio.run(scenario())
    assert removed == 1
    assert left == {"clusterip-10-96-0-1", "clusterip-10-96-0-3"}


def test_an_exhausted_pool_allocates_nothing() -> None:
    async def scenario() -> str | None:
        store = RecordStore()
        allocator = Allocator(store)
        tiny = AddressPool.parse("10.96.0.0/30")
        await allocator.allocate("clusterip", tiny, holder=holder(1))
        await allocator.allocate("clusterip", tiny, holder=holder(2))
        return await allocator.allocate("clusterip", tiny, holder=holder(3))

    assert asyncio.run(scenario()) is None
