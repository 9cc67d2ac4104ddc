"""Image pull decisions: policies, ErrImageNeverPull, ImagePullBackOff windows."""

from __future__ import annotations

import pytest

from kopflet.agent.runtime.backoff import BackoffEntry
from kopflet.agent.runtime.image_pulls import ImageStep, decide_image
from kopflet.api import ImagePullPolicy

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("policy", "present", "step", "reason"),
    [
        ("Always", True, ImageStep.PULL, ""),
        ("Always", False, ImageStep.PULL, ""),
        ("IfNotPresent", True, ImageStep.USE_LOCAL, ""),
        ("IfNotPresent", False, ImageStep.PULL, ""),
        ("Never", True, ImageStep.USE_LOCAL, ""),
        ("Never", False, ImageStep.REFUSE, "ErrImageNeverPull"),
    ],
)
def test_pull_policy_decides_whether_to_pull(
    policy: ImagePullPolicy, present: bool, step: ImageStep, reason: str
) -> None:
    decision = decide_image(image="x:1", policy=policy, present=present, backoff=None, now=100)
    assert (decision.step, decision.reason) == (step, reason)


def test_failed_pull_waits_in_image_pull_back_off_until_the_window_ends() -> None:
    entry = BackoffEntry(delay=10, since=100)
    inside = decide_image(image="x:1", policy="IfNotPresent", present=False, backoff=entry, now=105)
    assert (inside.step, inside.reason, inside.retry_at) == (
        ImageStep.WAIT,
        "ImagePullBackOff",
        110,
    )
    after = decide_image(image="x:1", policy="IfNotPresent", present=False, backoff=entry, now=110)
    assert after.step is ImageStep.PULL
