"""Image references and the effective ``imagePullPolicy``.

A static schema default cannot express the core rule, so the CRDs leave
``imagePullPolicy`` unset and every consumer resolves it here: the agent when it
decides whether to pull, and the status it reports.
"""

from __future__ import annotations

from typing import Literal

ImagePullPolicy = Literal["Always", "IfNotPresent", "Never"]


def image_tag(image: str) -> str | None:
    """The tag of an image reference, ``None`` if it has none.

    ``localhost:5000/busybox`` has no tag: a colon before the last slash belongs to
    the registry host. A digest (``@sha256:...``) is not a tag.
    """
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def has_digest(image: str) -> bool:
    return "@" in image


def effective_image_pull_policy(image: str, policy: ImagePullPolicy | None) -> ImagePullPolicy:
    """The core defaulting rule: an explicit policy wins; otherwise ``:latest`` or no
    tag (and no digest) means ``Always``, anything else ``IfNotPresent``."""
    if policy is not None:
        return policy
    tag = image_tag(image)
    if tag == "latest" or (tag is None and not has_digest(image)):
        return "Always"
    return "IfNotPresent"
