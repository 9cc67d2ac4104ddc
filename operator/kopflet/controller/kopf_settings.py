"""How kopf runs under the controller: no writes of its own to our objects, server-side
filtered and paginated watches, bounded timeouts.

The controller registers only indexing and event handlers. kopf stores no handler progress and
no last-handled configuration for those, so it never patches an object; the storages below make
that a guarantee rather than a consequence (an accidental change handler would otherwise start
writing annotations on every Instance — a patch storm at 5,000 Instances).
"""

from __future__ import annotations

from typing import Any

import kopf

from kopflet.api.constants import NODE_LEASE_NAMESPACE, SYSTEM_NAMESPACE


class NoProgressStorage(kopf.ProgressStorage):  # type: ignore[misc]
    """Handler progress is never persisted: our handlers are level-triggered and idempotent."""

    def fetch(self, *, key: Any, body: Any) -> None:
        return None

    def store(self, *, key: Any, record: Any, body: Any, patch: Any) -> None:
        return None

    def purge(self, *, key: Any, body: Any, patch: Any) -> None:
        return None

    def touch(self, *, body: Any, patch: Any, value: str | None) -> None:
        return None

    def clear(self, *, essence: Any) -> Any:
        return essence


class NoDiffBaseStorage(kopf.DiffBaseStorage):  # type: ignore[misc]
    """No last-handled configuration: reconcilers diff desired against observed state."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        # kopf would deep-copy every object on every event to detect changes nobody handles.
        return {}

    def fetch(self, *, body: Any) -> None:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


def tune(settings: kopf.OperatorSettings) -> None:
    settings.persistence.progress_storage = NoProgressStorage()
    settings.persistence.diffbase_storage = NoDiffBaseStorage()
    # Our own Events API writer tells the story; kopf's per-handler events would be noise.
    settings.posting.enabled = False
    # Peering needs kopf's own CRDs; leader election is done with a Lease (leader_election).
    settings.peering.standalone = True
    # Initial lists in pages of 500: a 5,000-Instance list never loads the API server at once.
    settings.watching.chunk_size = 500
    # Watches end server-side after 5 minutes and resume from the last resourceVersion.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    # Only the controller's own namespace: its event says the caches are synced.
    settings.watching.field_selectors["v1", "namespaces"] = f"metadata.name={SYSTEM_NAMESPACE}"
    # Only the node heartbeats among all Leases, filtered by the API server.
    settings.watching.field_selectors["coordination.k8s.io", "leases"] = (
        f"metadata.namespace={NODE_LEASE_NAMESPACE}"
    )
