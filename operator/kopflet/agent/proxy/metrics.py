"""Prometheus metrics of the proxy sync: how long, how many rules, when it last worked.

Collectors live on a registry passed in (the process-wide one by default), so tests
and several engines in one process don't collide on metric names.
"""

from __future__ import annotations

import functools

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

# Syncs of 10,000 service-ports take seconds; the buckets reach that far.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.sync_duration = Histogram(
            "kopflet_proxy_sync_duration_seconds",
            "Time one proxy rule sync took, by kind (full or partial).",
            ["kind"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.sync_failures = Counter(
            "kopflet_proxy_sync_failures_total",
            "Proxy rule syncs that failed, by kind (full or partial).",
            ["kind"],
            registry=registry,
        )
        self.rules_programmed = Gauge(
            "kopflet_proxy_rules_programmed",
            "Rules of ours in place after the last successful sync (listeners in userspace).",
            registry=registry,
        )
        self.last_sync_success = Gauge(
            "kopflet_proxy_last_sync_success_timestamp_seconds",
            "Wall-clock time of the last successful proxy rule sync.",
            registry=registry,
        )
        self.canary_repairs = Counter(
            "kopflet_proxy_canary_repairs_total",
            "Times our rules were found flushed behind our back and fully resynced.",
            registry=registry,
        )

    def observe_sync(self, *, full: bool, seconds: float, ok: bool) -> None:
        kind = "full" if full else "partial"
        self.sync_duration.labels(kind).observe(seconds)
        if not ok:
            self.sync_failures.labels(kind).inc()


@functools.cache
def default_metrics() -> ProxyMetrics:
    """The collectors on the process-wide registry, created once."""
    return ProxyMetrics(REGISTRY)
