"""What the supervisor runs: a command, where (host or a node's network namespace), how to tell
it is ready. Pure data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Component:
    name: str
    argv: tuple[str, ...]
    log_file: Path
    #: None runs on the host; otherwise the node whose network namespace it enters.
    node: str | None = None
    netns_path: Path | None = None
    env: tuple[tuple[str, str], ...] = ()
    #: True once the component serves; polled after every (re)start.
    ready: Callable[[], bool] | None = field(default=None, compare=False)
    #: Seconds a start may take before the start counts as failed.
    ready_timeout: float = 60.0
    #: Seconds the component may take to stop on SIGTERM before SIGKILL.
    stop_timeout: float = 15.0

    def command(self) -> list[str]:
        if self.netns_path is None:
            return list(self.argv)
        # nsenter --net only: `ip netns exec` would also remount /sys and hide the cgroup
        # mounts dockerd needs.
        return ["nsenter", f"--net={self.netns_path}", "--", *self.argv]
