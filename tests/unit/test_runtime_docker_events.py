"""The thread that carries the engine's blocking event stream into the agent's loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pytest
from runtime_records import app_labels

from kopflet.agent.runtime.container_runtime import EventKind, RuntimeEvent
from kopflet.agent.runtime.docker_runtime import pump_events

pytestmark = pytest.mark.unit


def message(action: str, container: str) -> dict[str, Any]:
    return {"Action": action, "Actor": {"ID": container, "Attributes": app_labels("u").render()}}


Item = RuntimeEvent | BaseException | None


def pumped(stream: Iterable[Mapping[str, Any]], count: int) -> list[Item]:
    """The first ``count`` items the pump thread hands a running loop from ``stream``."""

    async def main() -> list[Item]:
        queue: asyncio.Queue[Item] = asyncio.Queue()
        thread = threading.Thread(
            target=pump_events, args=(stream, asyncio.get_running_loop(), queue)
        )
        thread.start()
        items = [await asyncio.wait_for(queue.get(), timeout=5) for _ in range(count)]
        thread.join(timeout=5)
        return items

    return asyncio.run(main())


def test_our_events_then_the_end_reach_the_loop() -> None:
    stream = [
        message("start", "a"),
        {"Action": "die", "Actor": {"ID": "x", "Attributes": {}}},  # not ours
        message("die", "a"),
    ]
    first, second, end = pumped(stream, 3)
    assert isinstance(first, RuntimeEvent) and first.kind is EventKind.START
    assert isinstance(second, RuntimeEvent) and second.kind is EventKind.DIE
    assert end is None


def test_a_broken_stream_is_handed_to_the_reader() -> None:
    def broken() -> Iterator[Mapping[str, Any]]:
        yield message("start", "a")
        raise ConnectionError("engine went away")

    event, failure = pumped(broken(), 2)
    assert isinstance(event, RuntimeEvent)
    assert isinstance(failure, ConnectionError)


@pytest.mark.parametrize("ending", ["end", "event", "break"])
def test_a_stream_outliving_its_loop_ends_the_thread_quietly(ending: str) -> None:
    """The agent's loop closes (shutdown) before the closed stream's last word reaches it:
    the thread must end without an exception of its own."""
    released = threading.Event()

    def stream() -> Iterator[Mapping[str, Any]]:
        released.wait(timeout=5)
        if ending == "event":
            yield message("start", "a")
            yield message("die", "a")  # never read: the thread stops at the first one
        elif ending == "break":
            raise ConnectionError("closed under the reader")

    loop = asyncio.new_event_loop()
    queue: asyncio.Queue[Item] = asyncio.Queue()
    raised: list[BaseException | None] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: raised.append(args.exc_value)
    try:
        thread = threading.Thread(target=pump_events, args=(stream(), loop, queue))
        thread.start()
        loop.close()
        released.set()
        thread.join(timeout=5)
    finally:
        threading.excepthook = previous
    assert not thread.is_alive()
    assert raised == []
    assert queue.empty()
