"""What to send to the API server, computed from what is known: status and finalizer patches.

Pure. A status patch is a JSON merge patch of the top-level status fields that changed:
lists (conditions, containerStatuses) are replaced whole by a merge patch anyway, and the
handful of scalar fields is cheaper to compare than to diff deeper.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def status_merge_patch(
    new: Mapping[str, Any], bases: Iterable[Mapping[str, Any] | None]
) -> dict[str, Any]:
    """The merge patch taking the server from any of ``bases`` to ``new``: every field
    that differs from the first base is set, and every field some base holds but ``new``
    does not is removed (``null``).

    Several bases because the watch may not have echoed our last write yet: a field we
    wrote a moment ago must be removed even if the (older) watched copy never showed it.
    """
    known = [b for b in bases if b is not None]
    first = known[0] if known else {}
    patch: dict[str, Any] = {k: v for k, v in new.items() if first.get(k) != v}
    for base in known:
        for key in base:
            if key not in new:
                patch[key] = None
    return patch


def version_after(version: str, other: str) -> bool:
    """Whether ``version`` is newer than ``other``. resourceVersions are etcd revisions, so
    integers in practice; any other pair is not known to be newer."""
    try:
        return int(version) > int(other)
    except ValueError:
        return False


def finalizers_with(finalizers: Iterable[str] | None, name: str) -> list[str] | None:
    """The list with ``name`` appended, or ``None`` if it is there already."""
    current = list(finalizers or ())
    return None if name in current else [*current, name]


def finalizers_without(finalizers: Iterable[str] | None, name: str) -> list[str] | None:
    """The list without ``name``, or ``None`` if it was not there."""
    current = list(finalizers or ())
    return None if name not in current else [f for f in current if f != name]


def finalizer_patch(*, resource_version: str, finalizers: list[str]) -> dict[str, Any]:
    """A merge patch of the whole list, conditional on the version it was computed from
    (409 otherwise): a merge patch replaces lists, so without the condition a finalizer
    someone else added meanwhile would be lost."""
    return {"metadata": {"resourceVersion": resource_version, "finalizers": finalizers}}
