"""What is bound to each node — requests summed, Instances counted per Workload — kept up to
date one Instance at a time, so a scheduling pass does not re-add 5,000 Instances' requests.

Updates are keyed by Instance UID and replace what was known for it, so seeing the same state
twice (an event and a full rebuild) never counts anything twice. The scheduler rebuilds the
whole table from the cache now and then, which bounds any drift.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from kopflet.api import Instance
from kopflet.controller.instance_state import (
    NO_REQUESTS,
    NodeName,
    Requests,
    controller_uid,
    is_finished,
)


@dataclass(frozen=True)
class _Entry:
    node: NodeName
    requests: Requests
    owner: str | None


class NodeUsage:
    def __init__(self, requests_of: Callable[[Instance], Requests]) -> None:
        self._requests_of = requests_of
        self._entries: dict[str, _Entry] = {}
        self._used: dict[NodeName, Requests] = {}
        self._owners: dict[NodeName, Counter[str]] = {}

    def __contains__(self, uid: object) -> bool:
        return uid in self._entries

    def observe(self, uid: str, instance: Instance | None) -> bool:
        """The Instance of this UID as it is now (``None``: gone). True if that gave back
        room on a node: what it held there is held no longer, or less of it."""
        old = self._entries.pop(uid, None)
        if old is not None:
            self._used[old.node] = self._used.get(old.node, NO_REQUESTS) - old.requests
            if old.owner:
                self._owners[old.node][old.owner] -= 1
        if instance is None or not instance.spec.node_name or is_finished(instance):
            return old is not None
        entry = _Entry(
            node=NodeName(instance.spec.node_name),
            requests=self._requests_of(instance),
            owner=controller_uid(instance),
        )
        self._entries[uid] = entry
        self._used[entry.node] = self._used.get(entry.node, NO_REQUESTS) + entry.requests
        if entry.owner:
            self._owners.setdefault(entry.node, Counter())[entry.owner] += 1
        return old is not None and (old.node != entry.node or old.requests != entry.requests)

    def rebuild(self, instances: Iterable[Instance]) -> None:
        self._entries.clear()
        self._used.clear()
        self._owners.clear()
        for instance in instances:
            self.observe(str(instance.metadata.uid), instance)

    def used(self, node: str) -> Requests:
        return self._used.get(NodeName(node), NO_REQUESTS)

    def owners(self, node: str) -> Mapping[str, int]:
        return self._owners.get(NodeName(node), Counter())
