"""This node's Instances, from the watch into the runtime engine.

The watch is server-side filtered (``fieldSelector=spec.nodeName=<node>``): an Instance
rebound elsewhere leaves it as a deletion, and the engine removes its containers here.
The engine gets the complete set only after a complete list (``set_desired``): before
that nothing is removed (static stability across agent restarts and API outages).

Before an Instance reaches the engine, the ConfigMaps/Secrets of its namespace that it
references are watched and listed (bounded wait), and the agent's finalizer is requested
for it, so that its deletion waits for this node to have cleaned up.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable
from typing import Protocol

from loguru import logger

from kopflet.agent.informer import Obj
from kopflet.agent.instance_finalizers import FinalizerWriter
from kopflet.agent.reference_cache import RefScope, referenced_scopes
from kopflet.api import UID, Instance, ModelError


class RuntimeTarget(Protocol):
    """The part of :class:`RuntimeEngine` the feed drives."""

    def set_desired(self, instances: Iterable[Instance]) -> None: ...

    def put(self, instance: Instance) -> None: ...

    def discard(self, uid: UID) -> None: ...


class ReferenceTracker(Protocol):
    async def track(self, wanted: Iterable[RefScope]) -> None: ...


class Forgetting(Protocol):
    def forget(self, uid: UID) -> None: ...


class InstanceFeed:
    def __init__(
        self,
        *,
        node_name: str,
        engine: RuntimeTarget,
        references: ReferenceTracker,
        finalizers: FinalizerWriter,
        forgetful: Iterable[Forgetting] = (),
    ) -> None:
        self._node = node_name
        self._engine = engine
        self._references = references
        self._finalizers = finalizers
        self._forgetful = tuple(forgetful)
        #: The last Instance of each uid that parsed; a malformed update keeps it.
        self._known: dict[UID, Instance] = {}
        #: What each known Instance references, and how many reference each scope: kept as
        #: Instances come and go, not recomputed over all of them on every event.
        self._scopes_of: dict[UID, frozenset[RefScope]] = {}
        self._scope_users: Counter[RefScope] = Counter()
        self.synced = False

    @property
    def instances(self) -> list[Instance]:
        return list(self._known.values())

    def _parse(self, obj: Obj) -> Instance | None:
        uid = UID(str((obj.get("metadata") or {}).get("uid") or ""))
        try:
            instance = Instance.from_dict(obj)
        except ModelError as exc:
            # Static stability: the engine keeps running the last version that made sense.
            logger.error("Instance {} ignored, keeping its last good version: {}", uid, exc)
            return self._known.get(uid)
        known_uid = instance.metadata.uid
        if known_uid is None:
            return None
        if instance.metadata.deletion_grace_period_seconds is not None:
            # The API server sets 0 on every custom resource it deletes (graceful deletion is
            # for Pods only), which would kill the containers at once: the grace period of an
            # Instance is its spec's terminationGracePeriodSeconds.
            meta = dataclasses.replace(instance.metadata, deletion_grace_period_seconds=None)
            instance = dataclasses.replace(instance, metadata=meta)
        self._remember(known_uid, instance)
        return instance

    def _remember(self, uid: UID, instance: Instance) -> None:
        self._known[uid] = instance
        scopes = frozenset(referenced_scopes(instance))
        old = self._scopes_of.get(uid, frozenset())
        if scopes != old:
            self._scope_users.subtract(old)
            self._scope_users.update(scopes)
            self._scopes_of[uid] = scopes

    def _drop(self, uid: UID) -> None:
        self._known.pop(uid, None)
        self._scope_users.subtract(self._scopes_of.pop(uid, frozenset()))

    async def _track_references(self) -> None:
        await self._references.track(s for s, users in self._scope_users.items() if users > 0)

    def _request_finalizer(self, instance: Instance) -> None:
        if instance.spec.node_name == self._node and self._finalizers.needs_adding(instance):
            self._finalizers.request(instance, present=True)

    # -- InformerHandler -------------------------------------------------------------------

    async def on_change(self, old: Obj | None, new: Obj | None) -> None:
        if new is None:
            assert old is not None
            uid = UID(str((old.get("metadata") or {}).get("uid") or ""))
            self._drop(uid)
            self._finalizers.forget(uid)
            for other in self._forgetful:
                other.forget(uid)
            self._engine.discard(uid)
            await self._track_references()
            return
        instance = self._parse(new)
        if instance is None:
            return
        await self._track_references()
        self._request_finalizer(instance)
        if self.synced:
            self._engine.put(instance)

    async def on_synced(self, objects: list[Obj]) -> None:
        fresh = [i for i in (self._parse(o) for o in objects) if i is not None]
        alive = {i.metadata.uid for i in fresh}
        for uid in [u for u in self._known if u not in alive]:
            self._drop(uid)
        await self._track_references()
        for instance in fresh:
            self._request_finalizer(instance)
        self._engine.set_desired(fresh)
        self.synced = True
