"""Unique allocations — clusterIPs, nodePorts, node instance subnets — recorded in the API.

Each allocated value has a record: a ``coordination.k8s.io`` Lease in the controller's
namespace whose *name is the value* (``clusterip-10-96-0-12``). Creating it is the allocation:
the API server refuses a second object of the same name, so two writers (two workers, or two
controller replicas during a leader hand-over) can never hand out one value twice. The record
names its holder; the value itself is then written into the holder's spec, which is what the
agents and proxies read.

On start the records are listed again, so allocations survive restarts. A repair pass deletes
records whose holder is gone or no longer uses the value — only after re-reading the holder
from the API server and only for records this process has known for a minute, because the
write into the holder's spec follows the record's creation and must not be raced.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from loguru import logger

from kopflet.api.constants import SYSTEM_NAMESPACE
from kopflet.controller.address_pools import AllocationKind, Pool, allocation_name, free_values
from kopflet.controller.kube_api import (
    AlreadyExists,
    ClusterApi,
    Conflict,
    NotFound,
    lease_path,
)

KIND_LABEL = "kopflet.dev/allocation"
_HOLDER_KIND = "kopflet.dev/holder-kind"
_HOLDER_NAMESPACE = "kopflet.dev/holder-namespace"
_HOLDER_NAME = "kopflet.dev/holder-name"
_HOLDER_UID = "kopflet.dev/holder-uid"
_VALUE = "kopflet.dev/value"

#: Refused candidates in a row before an allocation gives up for now (and is retried).
_MAX_REFUSALS = 64
#: A record younger than this is never repaired away: its holder's spec write may be in flight.
REPAIR_MIN_AGE_SECONDS = 60.0


class AllocationRace(RuntimeError):
    """The record of a value changed on every attempt: retry the whole pass later."""


@dataclass(frozen=True)
class Holder:
    kind: str  # ProxyService | NodeAgent
    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind} {where}"

    def same_object_name(self, other: Holder) -> bool:
        return (self.kind, self.namespace, self.name) == (other.kind, other.namespace, other.name)


@dataclass(frozen=True)
class Record:
    kind: AllocationKind
    value: str
    holder: Holder
    uid: str  # of the record itself, for conditional deletes
    created_at: float  # controller monotonic clock (records listed at start count as old)


#: ``(holder, kind, value) -> still in use?``, answered from a fresh read of the holder.
StillUsed = Callable[[Holder, AllocationKind, str], Awaitable[bool]]


def _record_of(obj: dict[str, Any], *, created_at: float) -> Record | None:
    meta = obj.get("metadata") or {}
    labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
    kind = labels.get(KIND_LABEL)
    if kind not in ("clusterip", "nodeport", "instancecidr") or _VALUE not in notes:
        return None
    holder = Holder(
        kind=notes.get(_HOLDER_KIND, ""),
        namespace=notes.get(_HOLDER_NAMESPACE, ""),
        name=notes.get(_HOLDER_NAME, ""),
        uid=notes.get(_HOLDER_UID, ""),
    )
    return Record(
        kind=kind,
        value=notes[_VALUE],
        holder=holder,
        uid=str(meta.get("uid", "")),
        created_at=created_at,
    )


class Allocator:
    def __init__(self, api: ClusterApi, *, namespace: str = SYSTEM_NAMESPACE) -> None:
        self._api = api
        self._namespace = namespace
        self._records: dict[str, Record] = {}  # by record name
        self._cursor: dict[str, int] = {}
        # One allocation at a time in this process: the in-memory view picks distinct candidates;
        # the API server's name uniqueness covers everything else.
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        async with self._lock:
            await self._reload()
        logger.info("allocations loaded: {} records", len(self._records))

    async def _reload(self) -> None:
        objects = await self._api.list(lease_path(self._namespace), label_selector=KIND_LABEL)
        # A record first seen now counts as new: after a restart nothing is repaired away
        # before every holder has had time to write its values.
        now = time.monotonic()
        known = {r.uid: r.created_at for r in self._records.values()}
        records = {}
        for obj in objects:
            record = _record_of(obj, created_at=now)
            if record is not None:
                record = replace(record, created_at=known.get(record.uid, now))
                records[allocation_name(record.kind, record.value)] = record
        self._records = records

    def holder_of(self, kind: AllocationKind, value: str) -> Holder | None:
        record = self._records.get(allocation_name(kind, value))
        return record.holder if record else None

    def held_by(self, holder: Holder, kind: AllocationKind) -> list[str]:
        return [r.value for r in self._records.values() if r.kind == kind and r.holder == holder]

    def used(self, kind: AllocationKind) -> set[str]:
        return {r.value for r in self._records.values() if r.kind == kind}

    async def claim(
        self,
        kind: AllocationKind,
        value: str,
        *,
        holder: Holder,
        owner: dict[str, Any] | None = None,
    ) -> Holder | None:
        """Record ``value`` for ``holder``; returns the other holder if it is taken."""
        async with self._lock:
            return await self._claim(kind, value, holder=holder, owner=owner)

    async def _claim(
        self, kind: AllocationKind, value: str, *, holder: Holder, owner: dict[str, Any] | None
    ) -> Holder | None:
        name = allocation_name(kind, value)
        for _ in range(3):
            record = self._records.get(name)
            if record is not None and record.holder == holder:
                return None
            if record is not None and not (
                record.holder.same_object_name(holder) and record.holder.uid != holder.uid
            ):
                return record.holder
            if record is not None:
                # The holder's name now belongs to a new object, so the old one is gone: the
                # record is stale and the new object takes the value over.
                await self._delete(name, record)
            try:
                created = await self._api.create(
                    lease_path(self._namespace), self._body(kind, value, holder=holder, owner=owner)
                )
            except AlreadyExists:
                await self._refresh(name)
                continue
            fresh = _record_of(created, created_at=time.monotonic())
            assert fresh is not None
            self._records[name] = fresh
            return None
        raise AllocationRace(f"{kind} {value}: the record keeps changing under us")

    async def allocate(
        self,
        kind: AllocationKind,
        pool: Pool,
        *,
        holder: Holder,
        in_use_by_holder: Iterable[str] = (),
        owner: dict[str, Any] | None = None,
    ) -> str | None:
        """A new value for ``holder``, or one it already holds but does not use yet (its spec
        write failed last time). ``None`` if the pool is exhausted."""
        taken = set(in_use_by_holder)
        async with self._lock:
            for value in self.held_by(holder, kind):
                if value in pool and value not in taken:
                    return value
            start = self._cursor.get(kind, 0)
            for refusals in range(_MAX_REFUSALS):
                candidates = free_values(pool, self.used(kind), start=start)
                index, value = next(candidates, (-1, ""))
                if index < 0:
                    return None  # every value of the pool is recorded
                if await self._claim(kind, value, holder=holder, owner=owner) is None:
                    self._cursor[kind] = (index + 1) % pool.size
                    return value
                # Someone else recorded it: our view is stale (another replica during a
                # hand-over, or records made before our last list). Read them all again once,
                # and go on from a random place: two allocators walking the pool in step
                # would collide on every value.
                if refusals == 0:
                    await self._reload()
                start = random.randrange(pool.size)
            raise AllocationRace(f"{kind}: {_MAX_REFUSALS} values refused in a row")

    async def release(self, kind: AllocationKind, value: str, *, holder: Holder) -> None:
        name = allocation_name(kind, value)
        async with self._lock:
            record = self._records.get(name)
            if record is not None and record.holder == holder:
                await self._delete(name, record)

    async def release_all(self, holder: Holder) -> None:
        async with self._lock:
            for name, record in list(self._records.items()):
                if record.holder == holder:
                    await self._delete(name, record)

    async def repair(
        self, still_used: StillUsed, *, min_age: float = REPAIR_MIN_AGE_SECONDS
    ) -> int:
        """Delete records no holder uses; returns how many were deleted."""
        await self.load()
        now = time.monotonic()
        removed = 0
        for name, record in list(self._records.items()):
            if now - record.created_at < min_age:
                continue
            if await still_used(record.holder, record.kind, record.value):
                continue
            async with self._lock:
                current = self._records.get(name)
                if current is not None and current.uid == record.uid:
                    logger.info(
                        "releasing {} {}: {} no longer uses it",
                        record.kind,
                        record.value,
                        record.holder,
                    )
                    await self._delete(name, record)
                    removed += 1
        return removed

    async def _delete(self, name: str, record: Record) -> None:
        # Already gone, or replaced by someone else's record: either way, re-read it below.
        with contextlib.suppress(NotFound, Conflict):
            await self._api.delete(lease_path(self._namespace, name), uid=record.uid)
        self._records.pop(name, None)
        await self._refresh(name)

    async def _refresh(self, name: str) -> None:
        try:
            obj = await self._api.get(lease_path(self._namespace, name))
        except NotFound:
            self._records.pop(name, None)
            return
        record = _record_of(obj, created_at=time.monotonic())
        if record is not None:
            self._records[name] = record

    def _body(
        self, kind: AllocationKind, value: str, *, holder: Holder, owner: dict[str, Any] | None
    ) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "name": allocation_name(kind, value),
            "namespace": self._namespace,
            "labels": {KIND_LABEL: kind, "app.kubernetes.io/managed-by": "kopflet-controller"},
            "annotations": {
                _HOLDER_KIND: holder.kind,
                _HOLDER_NAMESPACE: holder.namespace,
                _HOLDER_NAME: holder.name,
                _HOLDER_UID: holder.uid,
                _VALUE: value,
            },
        }
        if owner is not None:
            # A cluster-scoped holder (NodeAgent) may own the record: the garbage collector
            # then frees its subnet when the NodeAgent is deleted.
            metadata["ownerReferences"] = [owner]
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": "/".join(
                    part for part in (holder.kind.lower(), holder.namespace, holder.name) if part
                )
            },
        }
