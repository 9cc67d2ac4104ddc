"""Whether to pull an image before starting a container, and what to report while failing.

Pure. The kubelet's image manager rules: ``Never`` with the image absent is
``ErrImageNeverPull``; a failed pull is ``ErrImagePull`` and arms a back-off per
(instance, image); pulls inside the back-off window are not attempted and the
container waits with ``ImagePullBackOff``. An unreachable registry is just a failed
pull: an error on the instance, never a crash of the agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from kopflet.agent.runtime.backoff import BackoffEntry, in_backoff, retry_at
from kopflet.api import UID, ImagePullPolicy

ERR_IMAGE_PULL = "ErrImagePull"
IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
ERR_IMAGE_NEVER_PULL = "ErrImageNeverPull"

#: Back-off is per (instance, image), as in the kubelet.
PullKey = tuple[UID, str]


class ImageStep(StrEnum):
    USE_LOCAL = "use-local"
    PULL = "pull"
    WAIT = "wait"
    REFUSE = "refuse"


@dataclass(frozen=True, kw_only=True)
class ImageDecision:
    step: ImageStep
    reason: str = ""
    message: str = ""
    retry_at: float | None = None


def decide_image(
    *,
    image: str,
    policy: ImagePullPolicy,
    present: bool,
    backoff: BackoffEntry | None,
    now: float,
) -> ImageDecision:
    if policy == "Never":
        if present:
            return ImageDecision(step=ImageStep.USE_LOCAL)
        return ImageDecision(
            step=ImageStep.REFUSE,
            reason=ERR_IMAGE_NEVER_PULL,
            message=f'Container image "{image}" is not present with pull policy of Never',
        )
    if policy == "IfNotPresent" and present:
        return ImageDecision(step=ImageStep.USE_LOCAL)
    if backoff is not None and in_backoff(backoff, failed_at=backoff.since, now=now):
        return ImageDecision(
            step=ImageStep.WAIT,
            reason=IMAGE_PULL_BACK_OFF,
            message=f'Back-off pulling image "{image}"',
            retry_at=retry_at(backoff, failed_at=backoff.since),
        )
    return ImageDecision(step=ImageStep.PULL)
