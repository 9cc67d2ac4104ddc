"""The Workload loop against an in-memory API: a lagging cache or an ambiguous create never
makes it create an Instance twice."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from test_controller_rollout import NOW, make_workload

from kopflet.controller.cluster_cache import ClusterCache
from kopflet.controller.events import EventRecorder
from kopflet.controller.instance_state import ObjectKey
from kopflet.controller.kube_api import ApiError, JsonObject
from kopflet.controller.workload_sync import WorkloadSync

pytestmark = pytest.mark.unit

KEY = ObjectKey("ns", "web")


class Api:
    def __init__(self, *, fail: list[BaseException | None] | None = None) -> None:
        self.created: list[str] = []
        self.status_patches = 0
        self._fail = list(fail or [])

    async def create(self, path: str, body: Any) -> JsonObject:
        if "/events" in path:
            return {}
        outcome = self._fail.pop(0) if self._fail else None
        if outcome is not None:
            raise outcome
        self.created.append(body["metadata"]["name"])
        return dict(body)

    async def merge_patch(self, path: str, patch: Any) -> JsonObject:
        self.status_patches += 1
        return {}

    async def get(self, path: str) -> JsonObject:
        return {}

    async def list(self, path: str, **_: Any) -> list[JsonObject]:
        return []

    async def delete(self, path: str, **_: Any) -> JsonObject:
        return {}


def run(api: Api, cache: ClusterCache, passes: int) -> None:
    async def scenario() -> None:
        sync = WorkloadSync(
            lambda: cache,
            api,
            EventRecorder(api, instance="t"),
            now=lambda: NOW,
        )
        for _ in range(passes):
            with contextlib.suppress(ApiError, TimeoutError):
                await sync.reconcile(KEY)

    asyncio.run(scenario())


def workload_cache() -> ClusterCache:
    return ClusterCache.from_objects(workloads=[make_workload(replicas=3).to_dict()])


def test_creates_the_missing_replicas_once_while_the_cache_has_not_caught_up() -> None:
    api = Api()
    run(api, workload_cache(), passes=3)
    assert len(api.created) == 3


def test_an_ambiguous_create_is_still_expected_so_it_is_not_repeated() -> None:
    api = Api(fail=[TimeoutError()])  # the first create: did the server make it? unknown
    run(api, workload_cache(), passes=3)
    assert len(api.created) == 0  # the batch stopped at the failure; nothing is made again


def test_a_refused_create_is_retried() -> None:
    api = Api(fail=[ApiError(422, "Invalid", "no")])
    run(api, workload_cache(), passes=2)
    assert len(api.created) == 3
