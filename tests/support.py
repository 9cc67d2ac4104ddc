"""Shared by the tests: infrastructure checks and waiting with a deadline."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import NoReturn, TypeVar

import pytest

T = TypeVar("T")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing_infrastructure(reason: str) -> NoReturn:
    """Skip on a developer's machine; fail under CI, where a skipped integration test would
    hide that nothing was tested."""
    if in_ci():
        pytest.fail(f"integration infrastructure missing under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def wait_for(
    probe: Callable[[], T | bool | None],
    *,
    timeout: float,
    message: str,
    interval: float = 0.2,
    diagnose: Callable[[], str] | None = None,
) -> T:
    """Poll ``probe`` until it returns something truthy, at most ``timeout`` seconds.

    On timeout the test fails with ``message``, the probe's last value and whatever ``diagnose``
    tells (the object, its events, the agent's log tail)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        last = probe()
        if last:
            return last  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    details = f"\nlast value: {last!r}"
    if diagnose is not None:
        try:
            details += "\n" + diagnose()
        except Exception as error:  # diagnostics must not hide the failure
            details += f"\n(diagnostics failed: {error!r})"
    pytest.fail(f"timed out after {timeout:.0f}s: {message}{details}", pytrace=False)
