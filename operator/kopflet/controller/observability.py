"""Prometheus metrics and the health endpoints of the controller.

Both are served from threads with the standard library's HTTP server, so a busy or stuck event
loop cannot hide itself from a probe: ``/healthz`` fails when the loop's heartbeat is stale.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

#: The event loop beats every second; a loop silent for this long is reported unhealthy.
HEARTBEAT_STALE_SECONDS = 30.0


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "kopflet_controller_reconciles",
            "Reconcile passes, by loop and result.",
            ["controller", "result"],
            registry=self.registry,
        )
        self.errors = Counter(
            "kopflet_controller_reconcile_errors",
            "Reconcile passes that failed and were queued for a retry.",
            ["controller"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "kopflet_controller_reconcile_duration_seconds",
            "Time spent in one reconcile pass.",
            ["controller"],
            registry=self.registry,
        )
        self.queue_latency = Histogram(
            "kopflet_controller_queue_latency_seconds",
            "Time a key waited in its work queue before a worker took it.",
            ["controller"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "kopflet_controller_queue_depth",
            "Keys waiting in a work queue.",
            ["controller"],
            registry=self.registry,
        )
        self.unschedulable = Gauge(
            "kopflet_controller_unschedulable_instances",
            "Unbound Instances no node could take, parked until a node changes or room is"
            " freed (kube-scheduler's pending pods in its unschedulable queue).",
            registry=self.registry,
        )
        self.objects = Gauge(
            "kopflet_controller_objects",
            "Objects in the controller's cache, by kind and phase.",
            ["kind", "phase"],
            registry=self.registry,
        )
        self.api_requests = Counter(
            "kopflet_controller_api_requests",
            "Requests to the API server, by verb and status code.",
            ["verb", "code"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "kopflet_controller_leader",
            "1 while this replica holds the leader Lease.",
            registry=self.registry,
        )

    def count_request(self, verb: str, code: int) -> None:
        self.api_requests.labels(verb=verb, code=str(code)).inc()


@dataclass
class HealthState:
    """What the probes report. ``synced``: the caches hold the initial lists and the loops run."""

    leader: bool = False
    synced: bool = False
    standby: bool = True
    heartbeat: float = field(default_factory=time.monotonic)

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    def alive(self) -> bool:
        return self.standby or time.monotonic() - self.heartbeat < HEARTBEAT_STALE_SECONDS

    def ready(self) -> bool:
        # A standby replica is ready (it is doing its job: waiting); a leader once synced.
        return self.standby or self.synced


def _handler(state: HealthState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path in ("/healthz", "/livez"):
                ok, text = state.alive(), "ok" if state.alive() else "event loop stalled"
            elif path == "/readyz":
                role = "standby" if state.standby else "leader"
                ok = state.ready()
                text = f"ok ({role})" if ok else "caches not synced"
            else:
                self.send_error(404)
                return
            payload = text.encode()
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            return  # probes every few seconds are not worth a log line

    return Handler


def serve_health(state: HealthState, *, host: str, port: int) -> ThreadingHTTPServer | None:
    if port <= 0:
        return None
    try:
        server = ThreadingHTTPServer((host, port), _handler(state))
    except OSError as error:
        logger.warning("health endpoints not served on {}:{}: {}", host, port, error)
        return None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    logger.info("health endpoints on {}:{} (/healthz, /readyz)", host, server.server_port)
    return server


def serve_metrics(metrics: ControllerMetrics, *, host: str, port: int) -> bool:
    if port <= 0:
        return False
    try:
        start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as error:
        logger.warning("metrics not served on {}:{}: {}", host, port, error)
        return False
    logger.info("metrics on {}:{}/metrics", host, port)
    return True
