"""List+watch: paging, ordered changes, bookmarks, relists after 410, back-off on errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from kopflet.agent.informer import Informer, Obj, WatchTarget, relist_changes
from kopflet.agent.kube_client import ApiUnavailable, JsonObject, split_lines

pytestmark = pytest.mark.unit


def obj(name: str, version: int, namespace: str = "ns", **extra: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": str(version)},
        **extra,
    }


class ScriptedSource:
    """Lists answer from ``lists`` (each a list of pages); each watch request plays the
    next script: events, then an exception (or a normal end)."""

    def __init__(self) -> None:
        self.lists: list[list[JsonObject]] = []
        self.watches: list[tuple[list[JsonObject], Exception | None]] = []
        self.list_params: list[dict[str, str]] = []
        self.current: list[JsonObject] = []
        self.watch_params: list[dict[str, str]] = []

    async def get(self, path: str, *, params: Mapping[str, str] | None = None) -> JsonObject:
        params = dict(params or {})
        self.list_params.append(params)
        if "continue" not in params:
            self.current = self.lists.pop(0)
        return self.current[int(params.get("continue", "0"))]

    async def watch(
        self, path: str, *, params: Mapping[str, str], server_timeout: int
    ) -> AsyncIterator[JsonObject]:
        self.watch_params.append(dict(params))
        if not self.watches:
            await asyncio.sleep(3600)
        events, error = self.watches.pop(0)
        for event in events:
            yield event
        if error is not None:
            raise error


class Recorder:
    def __init__(self) -> None:
        self.log: list[tuple[str, str | None, str | None]] = []

    async def on_change(self, old: Obj | None, new: Obj | None) -> None:
        def label(o: Obj | None) -> str | None:
            if o is None:
                return None
            return f"{o['metadata']['name']}@{o['metadata']['resourceVersion']}"

        self.log.append(("change", label(old), label(new)))

    async def on_synced(self, objects: list[Obj]) -> None:
        self.log.append(("synced", ",".join(sorted(o["metadata"]["name"] for o in objects)), None))


def page(items: list[dict[str, Any]], version: str, token: str | None = None) -> JsonObject:
    meta: dict[str, Any] = {"resourceVersion": version}
    if token:
        meta["continue"] = token
    return {"items": items, "metadata": meta}


async def run_rounds(informer: Informer, rounds: int) -> None:
    await asyncio.wait_for(informer.run(max_rounds=rounds), timeout=5)


def make(source: ScriptedSource, recorder: Recorder, delays: list[float]) -> Informer:
    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    return Informer(
        source,
        WatchTarget(path="/api/v1/things", field_selector="spec.nodeName=n1"),
        recorder,
        name="things",
        page_size=2,
        sleep=sleep,
    )


def test_initial_list_in_pages_then_watch_events_arrive_in_order() -> None:
    source, recorder, delays = ScriptedSource(), Recorder(), []
    source.lists = [[page([obj("a", 1), obj("b", 2)], "10", token="1"), page([obj("c", 3)], "12")]]
    source.watches = [
        (
            [
                {"type": "MODIFIED", "object": obj("a", 13)},
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}},
                {"type": "DELETED", "object": obj("b", 21)},
                {"type": "ADDED", "object": obj("d", 22)},
            ],
            None,
        )
    ]
    informer = make(source, recorder, delays)
    asyncio.run(run_rounds(informer, 1))
    assert recorder.log == [
        ("change", None, "a@1"),
        ("change", None, "b@2"),
        ("change", None, "c@3"),
        ("synced", "a,b,c", None),
        ("change", "a@1", "a@13"),
        ("change", "b@21", None),
        ("change", None, "d@22"),
    ]
    assert source.list_params[0] == {"fieldSelector": "spec.nodeName=n1", "limit": "2"}
    assert source.list_params[1]["continue"] == "1"
    assert source.watch_params[0] == {
        "fieldSelector": "spec.nodeName=n1",
        "resourceVersion": "12",
        "allowWatchBookmarks": "true",
    }
    assert informer.resource_version == "22"
    assert sorted(n for _, n in informer.store) == ["a", "c", "d"]
    assert informer.synced.is_set() and delays == []


def test_a_watch_that_ends_resumes_from_the_last_version_seen_including_bookmarks() -> None:
    source, recorder, delays = ScriptedSource(), Recorder(), []
    source.lists = [[page([obj("a", 1)], "5")]]
    source.watches = [
        ([{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "30"}}}], None),
        ([{"type": "MODIFIED", "object": obj("a", 31)}], None),
    ]
    informer = make(source, recorder, delays)
    asyncio.run(run_rounds(informer, 2))
    assert [p["resourceVersion"] for p in source.watch_params] == ["5", "30"]
    assert len(source.list_params) == 1  # no relist
    assert recorder.log[-1] == ("change", "a@1", "a@31")


def test_expired_version_relists_and_hands_on_only_what_changed_meanwhile() -> None:
    source, recorder, delays = ScriptedSource(), Recorder(), []
    source.lists = [
        [page([obj("a", 1), obj("b", 2)], "5")],
        # Meanwhile: a unchanged, b deleted, c added.
        [page([obj("a", 1), obj("c", 40)], "41")],
    ]
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}
    source.watches = [([gone], None), ([], None)]
    informer = make(source, recorder, delays)
    asyncio.run(run_rounds(informer, 2))
    assert recorder.log[3:] == [
        ("change", "b@2", None),
        ("change", None, "c@40"),
        ("synced", "a,c", None),
    ]
    assert informer.lists == 2 and informer.resource_version == "41"


def test_errors_back_off_doubling_and_a_working_watch_resets_the_back_off() -> None:
    source, recorder, delays = ScriptedSource(), Recorder(), []
    source.lists = [[page([], "5")]]
    source.watches = [
        ([], ApiUnavailable("refused")),
        ([], ApiUnavailable("refused")),
        ([], ApiUnavailable("refused")),
        ([{"type": "ADDED", "object": obj("a", 6)}], None),
        ([], ApiUnavailable("refused")),
    ]
    informer = make(source, recorder, delays)
    asyncio.run(run_rounds(informer, 5))
    assert delays == [0.5, 1.0, 2.0, 0.5]
    assert informer.store[("ns", "a")]["metadata"]["resourceVersion"] == "6"


def test_the_back_off_stops_at_30s() -> None:
    source, recorder, delays = ScriptedSource(), Recorder(), []
    source.lists = [[page([], "5")]]
    source.watches = [([], ApiUnavailable("refused")) for _ in range(10)]
    asyncio.run(run_rounds(make(source, recorder, delays), 10))
    assert delays[-3:] == [30.0, 30.0, 30.0] and max(delays) == 30.0


def test_relist_changes_skip_objects_whose_version_did_not_change() -> None:
    store = {("ns", "a"): obj("a", 1), ("ns", "b"): obj("b", 2), ("ns", "c"): obj("c", 3)}
    changes = relist_changes(store, [obj("a", 1), obj("b", 9), obj("d", 4)])
    names = [
        (old and old["metadata"]["resourceVersion"], new and new["metadata"]["resourceVersion"])
        for old, new in changes
    ]
    assert names == [("2", "9"), ("3", None), (None, "4")]


def test_watch_lines_are_reassembled_across_chunks_of_any_size() -> None:
    big = b'{"type":"ADDED","object":{"data":"' + b"x" * 300_000 + b'"}}'
    stream = big + b"\n" + b'{"type":"BOOKMARK"}\n'
    rest, lines = b"", []
    for i in range(0, len(stream), 4096):
        found, rest = split_lines(rest, stream[i : i + 4096])
        lines += found
    assert lines == [big, b'{"type":"BOOKMARK"}'] and rest == b""
