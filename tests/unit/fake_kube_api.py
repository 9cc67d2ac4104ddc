"""An in-memory API server for the agent's unit tests: the calls of ``KubeClient`` on a dict.

Objects live under their object path; collections are the paths without the name. It keeps
what the tests lean on: resourceVersions that grow, 404/409/422 as the typed errors, merge
patches with the resourceVersion and uid preconditions, JSON patches (``test``, ``add``,
``replace``, ``remove``), and failures injected per call.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Mapping
from typing import Any

from kopflet.agent.kube_client import Conflict, Invalid, JsonObject, NotFound


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def json_patched(target: Any, operations: list[Mapping[str, Any]]) -> Any:
    """RFC 6902, the four operations the agent uses; a failed ``test`` or a missing path is
    a 422 as the API server answers it."""
    result = copy.deepcopy(target)
    for op in operations:
        *parents, last = [
            p.replace("~1", "/").replace("~0", "~") for p in op["path"][1:].split("/")
        ]
        node = result
        try:
            for key in parents:
                node = node[int(key)] if isinstance(node, list) else node[key]
            if isinstance(node, list):
                index = len(node) if last == "-" else int(last)
                if op["op"] == "test" and node[index] != op["value"]:
                    raise Invalid(422, "Invalid", f"test of {op['path']} failed")
                if op["op"] == "remove":
                    del node[index]
                elif op["op"] == "add":
                    node.insert(index, copy.deepcopy(op["value"]))
                elif op["op"] == "replace":
                    node[index] = copy.deepcopy(op["value"])
            else:
                if op["op"] == "test" and node[last] != op["value"]:
                    raise Invalid(422, "Invalid", f"test of {op['path']} failed")
                if op["op"] == "remove":
                    del node[last]
                elif op["op"] in ("add", "replace"):
                    node[last] = copy.deepcopy(op["value"])
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise Invalid(422, "Invalid", f"{op['op']} {op['path']}: {exc!r}") from exc
    return result


class FakeKubeApi:
    def __init__(self) -> None:
        self.objects: dict[str, JsonObject] = {}
        self.calls: list[tuple[str, str, Any]] = []
        self.version = 100
        #: (method, path or "") → exceptions raised by the next matching calls, in order.
        self.failures: dict[tuple[str, str], list[Exception]] = {}
        self.watchers: dict[str, list[asyncio.Queue[JsonObject]]] = {}

    # -- test controls -------------------------------------------------------------------

    def put_object(self, path: str, obj: Mapping[str, Any]) -> JsonObject:
        stored = copy.deepcopy(dict(obj))
        stored.setdefault("metadata", {})
        self.version += 1
        stored["metadata"]["resourceVersion"] = str(self.version)
        stored["metadata"].setdefault("uid", f"uid-{path.rsplit('/', 1)[-1]}")
        self.objects[path] = stored
        return copy.deepcopy(stored)

    def fail(self, method: str, path: str, *errors: Exception) -> None:
        self.failures.setdefault((method, path), []).extend(errors)

    def _maybe_fail(self, method: str, path: str) -> None:
        for key in ((method, path), (method, "")):
            queue = self.failures.get(key)
            if queue:
                raise queue.pop(0)

    def methods(self, method: str) -> list[tuple[str, Any]]:
        return [(p, b) for m, p, b in self.calls if m == method]

    # -- the KubeClient surface ------------------------------------------------------------

    async def get(self, path: str, *, params: Mapping[str, str] | None = None) -> JsonObject:
        self.calls.append(("GET", path, dict(params or {})))
        self._maybe_fail("GET", path)
        if path in self.objects:
            return copy.deepcopy(self.objects[path])
        items = [
            copy.deepcopy(o) for p, o in sorted(self.objects.items()) if p.rsplit("/", 1)[0] == path
        ]
        if items or path.endswith("s"):
            return {"items": items, "metadata": {"resourceVersion": str(self.version)}}
        raise NotFound(404, "NotFound", path)

    async def create(self, path: str, body: Mapping[str, Any]) -> JsonObject:
        self.calls.append(("POST", path, copy.deepcopy(dict(body))))
        self._maybe_fail("POST", path)
        name = body["metadata"]["name"]
        target = f"{path}/{name}"
        if target in self.objects:
            raise Conflict(409, "AlreadyExists", target)
        return self.put_object(target, body)

    async def replace(self, path: str, body: Mapping[str, Any]) -> JsonObject:
        self.calls.append(("PUT", path, copy.deepcopy(dict(body))))
        self._maybe_fail("PUT", path)
        current = self.objects.get(path)
        if current is None:
            raise NotFound(404, "NotFound", path)
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            raise Conflict(409, "Conflict", "the object has been modified")
        stored = dict(body)
        stored["metadata"] = {**body.get("metadata", {}), "uid": current["metadata"]["uid"]}
        return self.put_object(path, stored)

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> JsonObject:
        self.calls.append(("PATCH", path, copy.deepcopy(dict(patch))))
        self._maybe_fail("PATCH", path)
        base_path = path.removesuffix("/status")
        current = self.objects.get(base_path)
        if current is None:
            raise NotFound(404, "NotFound", path)
        meta = dict(patch.get("metadata") or {})
        wanted_version = meta.pop("resourceVersion", None)
        if wanted_version and wanted_version != current["metadata"]["resourceVersion"]:
            raise Conflict(409, "Conflict", "the object has been modified")
        wanted_uid = meta.pop("uid", None)
        if wanted_uid and wanted_uid != current["metadata"]["uid"]:
            raise Conflict(409, "Conflict", "uid precondition failed")
        body = {k: v for k, v in patch.items() if k != "metadata"}
        if path.endswith("/status"):
            body = {"status": body.get("status")}
        elif meta:
            body["metadata"] = meta
        return self.put_object(base_path, merge(current, body))

    async def json_patch(self, path: str, operations: list[Mapping[str, Any]]) -> JsonObject:
        self.calls.append(("JSONPATCH", path, copy.deepcopy(list(operations))))
        self._maybe_fail("PATCH", path)
        current = self.objects.get(path)
        if current is None:
            raise NotFound(404, "NotFound", path)
        patched = json_patched(current, operations)
        patched["metadata"]["uid"] = current["metadata"]["uid"]
        return self.put_object(path, patched)

    async def watch(
        self, path: str, *, params: Mapping[str, str], server_timeout: int
    ) -> AsyncIterator[JsonObject]:
        """Events :meth:`emit`-ted for the collection ``path`` after the watch started."""
        self.calls.append(("WATCH", path, dict(params)))
        self._maybe_fail("WATCH", path)
        queue: asyncio.Queue[JsonObject] = asyncio.Queue()
        self.watchers.setdefault(path, []).append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self.watchers[path].remove(queue)

    def emit(self, collection: str, kind: str, obj: Mapping[str, Any]) -> JsonObject:
        """Store (or delete) an object and tell the watchers of its collection."""
        path = f"{collection}/{obj['metadata']['name']}"
        stored = self.objects.pop(path) if kind == "DELETED" else self.put_object(path, obj)
        for queue in self.watchers.get(collection, []):
            queue.put_nowait({"type": kind, "object": copy.deepcopy(stored)})
        return stored
