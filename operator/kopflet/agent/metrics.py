"""Prometheus metrics of the agent's own loops (the engines have theirs: runtime, proxy)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

LEASE_RENEWALS = Counter(
    "kopflet_agent_lease_renewals_total", "Node Lease renewal attempts, by result.", ["result"]
)
NODE_STATUS_WRITES = Counter(
    "kopflet_agent_node_status_writes_total", "NodeAgent status patches sent (only on change)."
)
INSTANCE_STATUS_WRITES = Counter(
    "kopflet_agent_instance_status_writes_total", "Instance status patches sent (only on change)."
)
NODE_READY = Gauge("kopflet_agent_node_ready", "1 while the node reports Ready=True.")
WATCH_ERRORS = Counter(
    "kopflet_agent_watch_errors_total",
    "List/watch requests that failed, by watched kind.",
    ["kind"],
)
EVENTS_WRITTEN = Counter(
    "kopflet_agent_events_written_total", "Events created or their series bumped."
)
