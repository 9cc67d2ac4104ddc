"""The Workload loop: re-read a Workload and its Instances, plan (``rollout``), act, report
(``workload_status``). Plays the Deployment and ReplicaSet controllers at once: Instances are
owned by their Workload directly and carry their revision in the template-hash label.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from loguru import logger

from kopflet.api import Instance, Workload
from kopflet.api.constants import (
    API_VERSION,
    INSTANCE_KIND,
    INSTANCE_PLURAL,
    NODE_NAME_LABEL,
    TEMPLATE_HASH_LABEL,
    WORKLOAD_KIND,
    WORKLOAD_PLURAL,
)
from kopflet.controller.cluster_cache import ClusterCache
from kopflet.controller.events import EventRecorder, ref_of
from kopflet.controller.expectations import Expectations
from kopflet.controller.instance_state import ObjectKey, is_terminating
from kopflet.controller.kube_api import (
    AlreadyExists,
    ApiError,
    ClusterApi,
    Conflict,
    NotFound,
    custom_path,
)
from kopflet.controller.rollout import plan_rollout, revision_of
from kopflet.controller.template_hash import (
    TemplateHash,
    instance_name,
    random_suffix,
)
from kopflet.controller.workload_status import compute_status

#: Concurrent API writes of one Workload pass.
_WRITE_CONCURRENCY = 8


def build_instance(workload: Workload, revision: TemplateHash, name: str) -> dict[str, Any]:
    """The Instance a Workload's template makes: its labels plus the revision, owned by the
    Workload (so deleting the Workload garbage-collects it)."""
    template = workload.spec.template
    meta = template.metadata
    labels = {**(meta.labels if meta and meta.labels else {}), TEMPLATE_HASH_LABEL: revision}
    spec = template.spec.to_dict()
    if template.spec.node_name:
        labels[NODE_NAME_LABEL] = template.spec.node_name  # bound by the template itself
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": workload.metadata.namespace,
        "labels": labels,
        "ownerReferences": [
            {
                "apiVersion": API_VERSION,
                "kind": WORKLOAD_KIND,
                "name": workload.metadata.name,
                "uid": workload.metadata.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    if meta and meta.annotations:
        metadata["annotations"] = dict(meta.annotations)
    return {"apiVersion": API_VERSION, "kind": INSTANCE_KIND, "metadata": metadata, "spec": spec}


def _namespace_terminating(error: Exception | None) -> bool:
    return (
        isinstance(error, ApiError) and error.status == 403 and "being terminated" in error.message
    )


class WorkloadSync:
    def __init__(
        self,
        cache: Callable[[], ClusterCache],
        api: ClusterApi,
        events: EventRecorder,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._cache = cache
        self._api = api
        self._events = events
        self._now = now
        self.expectations: Expectations[ObjectKey] = Expectations(clock=clock)

    async def reconcile(self, key: ObjectKey) -> float | None:
        cache = self._cache()
        workload = cache.workload(key)
        if workload is None or workload.metadata.uid is None:
            self.expectations.forget(key)
            return None
        if workload.metadata.deletion_timestamp is not None:
            return None  # the garbage collector removes the Instances
        instances = cache.instances_owned_by(workload.metadata.uid)
        present = {i.metadata.name or "" for i in instances}
        live = {str(i.metadata.uid) for i in instances if not is_terminating(i)}
        if not self.expectations.satisfied(key, present_names=present, live_uids=live):
            # The watch has not shown our last writes yet; their events will wake us.
            return self.expectations.seconds_until_expiry(key)

        now = self._now()
        plan = plan_rollout(workload, instances, now=now)
        await self._delete(workload, key, plan.delete, instances)
        await self._create(workload, key, plan.revision, plan.create, instances)
        result = compute_status(workload, instances, revision=plan.revision, now=now)
        if result.status != workload.status:
            try:
                await self._api.merge_patch(
                    custom_path(
                        WORKLOAD_PLURAL,
                        namespace=key.namespace,
                        name=key.name,
                        subresource="status",
                    ),
                    {"status": result.status.to_dict()},
                )
            except NotFound:
                return None  # deleted meanwhile: its DELETED event follows
        for event in result.events:
            self._events.record(
                ref_of(workload),
                type=event.type,  # type: ignore[arg-type]
                reason=event.reason,
                action="Rollout",
                note=event.note,
            )
        waits = [w for w in (plan.requeue_after, result.requeue_after) if w is not None]
        return min(waits) if waits else None

    async def _create(
        self,
        workload: Workload,
        key: ObjectKey,
        revision: TemplateHash,
        count: int,
        instances: Sequence[Instance],
    ) -> None:
        if count <= 0:
            return
        before = sum(1 for i in instances if revision_of(i) == revision and not is_terminating(i))
        names = [instance_name(key.name, revision, random_suffix()) for _ in range(count)]
        self.expectations.expect_creates(key, names)
        path = custom_path(INSTANCE_PLURAL, namespace=key.namespace)
        created = 0
        failure: Exception | None = None
        # Slow start (1, 2, 4, ...): a Workload the API refuses (a quota, an invalid template)
        # costs one failed request, not `replicas` of them.
        batch, index = 1, 0
        while index < len(names) and failure is None:
            chunk = names[index : index + batch]
            index += len(chunk)
            results = await asyncio.gather(
                *(self._api.create(path, build_instance(workload, revision, n)) for n in chunk),
                return_exceptions=True,
            )
            for name, outcome in zip(chunk, results, strict=True):
                if isinstance(outcome, BaseException):
                    # Only an answer from the API server says it was not created; after a
                    # timeout or a broken connection it may well exist: keep expecting it.
                    if isinstance(outcome, ApiError):
                        self.expectations.create_failed(key, name)
                    if not isinstance(outcome, AlreadyExists):
                        failure = failure or outcome  # type: ignore[assignment]
                else:
                    created += 1
            batch = min(batch * 2, _WRITE_CONCURRENCY * 4)
        for name in names[index:]:
            self.expectations.create_failed(key, name)
        if created:
            self._events.record(
                ref_of(workload),
                type="Normal",
                reason="ScalingRevision",
                action="Scale",
                note=f"Scaled up revision {revision} from {before} to {before + created}",
            )
        if _namespace_terminating(failure):
            return  # the Workload goes with its namespace: nothing to retry
        if failure is not None:
            self._events.record(
                ref_of(workload),
                type="Warning",
                reason="FailedCreate",
                action="Scale",
                note=f"Error creating instances of revision {revision}: {failure}",
            )
            raise failure

    async def _delete(
        self,
        workload: Workload,
        key: ObjectKey,
        doomed: Sequence[Instance],
        instances: Sequence[Instance],
    ) -> None:
        if not doomed:
            return
        self.expectations.expect_deletes(key, [str(i.metadata.uid) for i in doomed])
        gate = asyncio.Semaphore(_WRITE_CONCURRENCY)

        async def delete(instance: Instance) -> bool:
            async with gate:
                try:
                    await self._api.delete(
                        custom_path(
                            INSTANCE_PLURAL, namespace=key.namespace, name=instance.metadata.name
                        ),
                        uid=instance.metadata.uid,
                    )
                except (NotFound, Conflict):
                    self.expectations.delete_failed(key, str(instance.metadata.uid))
                    return False  # gone already, or a different object by that name now
                except ApiError:
                    self.expectations.delete_failed(key, str(instance.metadata.uid))
                    raise
                return True

        results = await asyncio.gather(*(delete(i) for i in doomed), return_exceptions=True)
        live = Counter(revision_of(i) for i in instances if not is_terminating(i))
        removed = Counter(
            revision_of(i) for i, ok in zip(doomed, results, strict=True) if ok is True
        )
        for revision, count in removed.items():
            self._events.record(
                ref_of(workload),
                type="Normal",
                reason="ScalingRevision",
                action="Scale",
                note=f"Scaled down revision {revision} from {live[revision]} to"
                f" {live[revision] - count}",
            )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            logger.warning("workload {}: {} deletes failed: {}", key, len(errors), errors[0])
            raise errors[0]
