"""The ProxyService loop writes status only on the copy it read: endpoints written by hand
meanwhile (a service without a selector) are never put back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_controller_allocation import RecordStore

from kopflet.controller.address_pools import AddressPool, PortPool
from kopflet.controller.allocator import Allocator
from kopflet.controller.cluster_cache import ClusterCache
from kopflet.controller.events import EventRecorder
from kopflet.controller.instance_state import ObjectKey
from kopflet.controller.kube_api import Conflict, JsonObject
from kopflet.controller.service_sync import ServiceSync

pytestmark = pytest.mark.unit


class Api:
    """The service's stored resourceVersion has moved on past the cached copy."""

    def __init__(self, stored_version: str) -> None:
        self.stored_version = stored_version
        self.status_writes: list[Any] = []

    async def create(self, path: str, body: Any) -> JsonObject:
        return {}

    async def merge_patch(self, path: str, patch: Any) -> JsonObject:
        wanted = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != self.stored_version:
            raise Conflict(409, "Conflict", "the object has been modified")
        self.status_writes.append(patch)
        return {}


def cached_service(version: str) -> dict[str, Any]:
    return {
        "apiVersion": "kopflet.dev/v1alpha1",
        "kind": "ProxyService",
        "metadata": {"name": "manual", "namespace": "ns", "resourceVersion": version,
                     "generation": 1, "uid": "u1"},
        "spec": {"clusterIP": "10.96.0.10", "type": "ClusterIP",
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
        "status": {"endpoints": []},
    }  # fmt: skip


def reconcile(api: Api, cache: ClusterCache) -> float | None:
    async def scenario() -> float | None:
        sync = ServiceSync(
            lambda: cache,
            api,  # type: ignore[arg-type]
            EventRecorder(api, instance="t"),  # type: ignore[arg-type]
            Allocator(RecordStore()),
            service_pool=AddressPool.parse("10.96.0.0/16"),
            node_port_pool=PortPool.parse("30000-32767"),
        )
        return await sync.reconcile(ObjectKey("ns", "manual"))

    return asyncio.run(scenario())


def test_a_status_from_a_stale_copy_is_not_written_and_the_service_is_looked_at_again() -> None:
    cache = ClusterCache.from_objects(services=[cached_service("1")])
    # Someone wrote the endpoints by hand after the cache's copy: stored version "2".
    api = Api(stored_version="2")
    assert reconcile(api, cache) == pytest.approx(0.1)
    assert api.status_writes == []


def test_a_status_from_the_current_copy_is_written_on_that_version() -> None:
    cache = ClusterCache.from_objects(services=[cached_service("2")])
    api = Api(stored_version="2")
    assert reconcile(api, cache) is None
    [patch] = api.status_writes
    assert patch["metadata"]["resourceVersion"] == "2"
