"""The revision of a Workload's Instance template, and the names of the Instances made from it."""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import NewType

from kopflet.api import InstanceTemplate

#: Short, stable digest of an Instance template: the value of the template-hash label.
TemplateHash = NewType("TemplateHash", str)

# Like the core's SafeEncodeString: no vowels (no words), no 0/1/3 (no look-alikes).
_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_HASH_LENGTH = 10
_SUFFIX_LENGTH = 5
#: Instance names double as container hostnames, which are DNS labels (63 characters).
_NAME_LIMIT = 63


def _encode(digest: bytes, length: int) -> str:
    number = int.from_bytes(digest, "big")
    out = []
    for _ in range(length):
        number, index = divmod(number, len(_ALPHABET))
        out.append(_ALPHABET[index])
    return "".join(out)


def template_hash(template: InstanceTemplate) -> TemplateHash:
    """Equal templates hash equal: the canonical JSON of the template, digested.

    The API server has already applied the schema defaults, so a template written with or
    without a default value hashes the same once stored.
    """
    canonical = json.dumps(template.to_dict(), sort_keys=True, separators=(",", ":"))
    return TemplateHash(_encode(hashlib.sha256(canonical.encode()).digest(), _HASH_LENGTH))


def random_suffix() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(_SUFFIX_LENGTH))


def instance_name(workload_name: str, revision: TemplateHash, suffix: str) -> str:
    """``<workload>-<revision>-<suffix>``, the workload part cut so the name stays a DNS label."""
    tail = f"-{revision}-{suffix}"
    return workload_name[: _NAME_LIMIT - len(tail)].rstrip("-.") + tail
