"""This node's Instances into the runtime engine, and the ConfigMaps/Secrets they read."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterable
from typing import Any

import pytest
from fake_kube_api import FakeKubeApi

from kopflet.agent import instance_feed
from kopflet.agent.instance_feed import InstanceFeed
from kopflet.agent.instance_finalizers import FinalizerWriter
from kopflet.agent.reference_cache import (
    ReferenceCache,
    RefScope,
    config_map_data,
    referenced_scopes,
    secret_data,
)
from kopflet.api import UID, Instance
from kopflet.api.constants import AGENT_FINALIZER

pytestmark = pytest.mark.unit


def instance(name: str, *, node: str = "n1", namespace: str = "ns", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"nodeName": node, "containers": [{"name": "c", "image": "img"}]}
    body.update(spec)
    return {
        "apiVersion": "kopflet.dev/v1alpha1",
        "kind": "Instance",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "resourceVersion": "7",
        },
        "spec": body,
    }


class FakeEngine:
    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []

    def set_desired(self, instances: Iterable[Instance]) -> None:
        self.log.append(("set_desired", sorted(i.metadata.name or "" for i in instances)))

    def put(self, instance: Instance) -> None:
        self.log.append(("put", instance.metadata.name))

    def discard(self, uid: UID) -> None:
        self.log.append(("discard", uid))


class Tracker:
    def __init__(self) -> None:
        self.tracked: list[set[RefScope]] = []

    async def track(self, wanted: Iterable[RefScope]) -> None:
        self.tracked.append(set(wanted))


class Forget:
    def __init__(self) -> None:
        self.forgotten: list[UID] = []

    def forget(self, uid: UID) -> None:
        self.forgotten.append(uid)


def make_feed() -> tuple[InstanceFeed, FakeEngine, Tracker, FinalizerWriter, Forget]:
    engine, tracker, forget = FakeEngine(), Tracker(), Forget()
    writer = FinalizerWriter(FakeKubeApi())
    feed = InstanceFeed(
        node_name="n1", engine=engine, references=tracker, finalizers=writer, forgetful=[forget]
    )
    return feed, engine, tracker, writer, forget


def test_nothing_reaches_the_engine_before_the_first_complete_list() -> None:
    feed, engine, _, _, _ = make_feed()

    async def scenario() -> None:
        await feed.on_change(None, instance("a"))
        await feed.on_change(None, instance("b"))
        assert engine.log == []
        await feed.on_synced([instance("a"), instance("b")])
        await feed.on_change(instance("a"), instance("a", restartPolicy="Never"))

    asyncio.run(scenario())
    assert engine.log == [("set_desired", ["a", "b"]), ("put", "a")]


def test_an_instance_leaving_the_watch_is_discarded_and_forgotten() -> None:
    feed, engine, _, writer, forget = make_feed()

    async def scenario() -> None:
        await feed.on_synced([instance("a")])
        await feed.on_change(instance("a"), None)

    asyncio.run(scenario())
    assert engine.log[-1] == ("discard", "uid-a")
    assert forget.forgotten == ["uid-a"] and writer.pending == 0 and feed.instances == []


def test_live_instances_get_the_agents_finalizer_requested_deleting_ones_do_not() -> None:
    feed, _, _, writer, _ = make_feed()
    deleting = instance("b")
    deleting["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    has_it = instance("c")
    has_it["metadata"]["finalizers"] = [AGENT_FINALIZER]
    asyncio.run(feed.on_synced([instance("a"), deleting, has_it]))
    assert writer.pending == 1


def test_a_malformed_update_keeps_the_last_good_version_running() -> None:
    feed, engine, _, _, _ = make_feed()
    broken = instance("a")
    broken["spec"] = {"nodeName": "n1", "containers": "not a list"}

    async def scenario() -> None:
        await feed.on_synced([instance("a")])
        await feed.on_change(instance("a"), broken)
        await feed.on_synced([broken])

    asyncio.run(scenario())
    assert engine.log == [("set_desired", ["a"]), ("put", "a"), ("set_desired", ["a"])]


def test_a_deleted_instance_keeps_its_spec_grace_period_not_the_api_servers_zero() -> None:
    feed, _, _, _, _ = make_feed()
    deleting = instance("a", terminationGracePeriodSeconds=20)
    deleting["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    deleting["metadata"]["deletionGracePeriodSeconds"] = 0  # what it sets on custom resources
    asyncio.run(feed.on_synced([deleting]))
    [handed] = feed.instances
    assert handed.metadata.deletion_grace_period_seconds is None
    assert handed.metadata.deletion_timestamp == "2025-01-01T00:00:00Z"
    assert handed.spec.termination_grace_period_seconds == 20


def test_referenced_kinds_are_watched_per_namespace_before_the_engine_sees_them() -> None:
    feed, _, tracker, _, _ = make_feed()
    uses_both = instance(
        "a",
        containers=[
            {
                "name": "c",
                "image": "img",
                "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
            }
        ],
        volumes=[{"name": "v", "configMap": {"name": "cm"}}],
    )
    plain = instance("b", namespace="other")
    asyncio.run(feed.on_synced([uses_both, plain]))
    assert tracker.tracked[-1] == {("configmaps", "ns"), ("secrets", "ns")}
    asyncio.run(feed.on_change(uses_both, None))
    assert tracker.tracked[-1] == set()


def test_referenced_scopes_cover_env_env_from_and_volumes() -> None:
    only_env_from = Instance.from_dict(
        instance(
            "a",
            containers=[{"name": "c", "image": "i", "envFrom": [{"configMapRef": {"name": "x"}}]}],
        )
    )
    assert referenced_scopes(only_env_from) == {("configmaps", "ns")}
    secret_volume = Instance.from_dict(
        instance("b", volumes=[{"name": "v", "secret": {"secretName": "s"}}])
    )
    assert referenced_scopes(secret_volume) == {("secrets", "ns")}
    assert referenced_scopes(Instance.from_dict(instance("c"))) == set()


def test_config_map_and_secret_values_are_handed_out_as_bytes() -> None:
    encoded = base64.b64encode(b"\x00\x01").decode()
    assert config_map_data({"data": {"a": "hi"}, "binaryData": {"b": encoded}}) == {
        "a": b"hi",
        "b": b"\x00\x01",
    }
    assert secret_data({"data": {"password": base64.b64encode(b"s3cret").decode()}}) == {
        "password": b"s3cret"
    }


def test_reference_cache_lists_a_namespace_before_answering_and_wakes_on_changes() -> None:
    api = FakeKubeApi()
    configmaps = "/api/v1/namespaces/ns/configmaps"
    api.put_object(
        f"{configmaps}/cfg",
        {"metadata": {"name": "cfg", "namespace": "ns"}, "data": {"greeting": "hi"}},
    )
    wakes: list[int] = []
    cache = ReferenceCache(api, on_change=lambda: wakes.append(1), sync_timeout=2)

    async def scenario() -> None:
        await cache.track({("configmaps", "ns")})
        assert cache.config_map("ns", "cfg") == {"greeting": b"hi"}
        assert cache.config_map("ns", "missing") is None
        assert cache.secret("ns", "cfg") is None  # secrets of ns are not watched
        woken_by_list = len(wakes)
        for _ in range(100):  # the watch starts after the list: bounded wait for it
            if api.watchers.get(configmaps):
                break
            await asyncio.sleep(0.01)
        api.emit(
            configmaps,
            "MODIFIED",
            {"metadata": {"name": "cfg", "namespace": "ns"}, "data": {"greeting": "hello"}},
        )
        for _ in range(100):
            if cache.config_map("ns", "cfg") == {"greeting": b"hello"}:
                break
            await asyncio.sleep(0.01)
        assert cache.config_map("ns", "cfg") == {"greeting": b"hello"}
        assert len(wakes) == woken_by_list + 1
        await cache.track(set())
        assert cache.scopes == set() and cache.config_map("ns", "cfg") is None
        await cache.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=10))


def test_scopes_are_counted_per_instance_not_recomputed_over_all_on_every_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    feed, _, tracker, _, _ = make_feed()
    with_secret = {
        "name": "c",
        "image": "img",
        "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
    }
    a = instance("a", containers=[with_secret])
    b = instance("b", containers=[with_secret])
    asyncio.run(feed.on_synced([a, b, *(instance(f"x{i}") for i in range(20))]))
    assert tracker.tracked[-1] == {("secrets", "ns")}
    computed: list[str] = []
    original = instance_feed.referenced_scopes

    def counting(i: Instance) -> set[RefScope]:
        computed.append(i.metadata.name or "")
        return original(i)

    monkeypatch.setattr(instance_feed, "referenced_scopes", counting)
    # One of the two users stops referencing the Secret: still watched for the other.
    asyncio.run(feed.on_change(a, instance("a")))
    assert computed == ["a"]
    assert tracker.tracked[-1] == {("secrets", "ns")}
    asyncio.run(feed.on_change(b, None))
    assert tracker.tracked[-1] == set()
    assert computed == ["a"]
