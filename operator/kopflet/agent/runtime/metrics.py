"""Prometheus metrics of the runtime half (registered once, in the default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SYNC_DURATION = Histogram(
    "kopflet_runtime_instance_sync_duration_seconds",
    "Duration of one instance sync pass (plan, act, status).",
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
SYNC_ERRORS = Counter(
    "kopflet_runtime_instance_sync_errors_total",
    "Instance sync passes that ended in an error and will be retried.",
)
RELIST_AGE = Gauge(
    "kopflet_runtime_relist_age_seconds",
    "Seconds since the start of the last completed relist of the container engine.",
)
RELIST_DURATION = Histogram(
    "kopflet_runtime_relist_duration_seconds", "Duration of one full relist."
)
CONTAINER_RESTARTS = Counter(
    "kopflet_runtime_container_restarts_total",
    "Containers started again after an earlier one of the same name.",
)
PROBE_RESULTS = Counter(
    "kopflet_runtime_probe_results_total",
    "Probe result changes, by probe type and result.",
    ["probe_type", "result"],
)
ENGINE_REQUESTS = Counter(
    "kopflet_runtime_engine_requests_total",
    "Requests to the container engine's API, by operation (the kubelet's "
    "kubelet_runtime_operations_total).",
    ["operation"],
)
STARTS_WAITING = Gauge(
    "kopflet_runtime_starts_waiting",
    "Container creates-and-starts waiting for one of the node's parallel-start slots.",
)
