"""``kopflet controller``: flags, logging, metrics and health, leader election, then kopf.

Crash-only: a replica that loses the leader Lease stops (exit 1) and is restarted by its
supervisor as a standby; a replica asked to stop releases the Lease first so that the standby
takes over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
from collections.abc import Sequence
from types import FrameType

import kopf
import kubernetes
from loguru import logger

from kopflet import __version__
from kopflet.controller.events import EventRecorder
from kopflet.controller.handlers import build_registry
from kopflet.controller.kube_api import KubeApi, load_client_configuration
from kopflet.controller.leader_election import LeaderElector
from kopflet.controller.logs import configure_logging
from kopflet.controller.observability import (
    ControllerMetrics,
    HealthState,
    serve_health,
    serve_metrics,
)
from kopflet.controller.options import ControllerOptions, parse_options
from kopflet.controller.runtime import ControllerRuntime


class StopSignal:
    """Set from any thread (signal handler, leader elector); seen by kopf's event loop as an
    asyncio event — a threading.Event handed to kopf would park an executor thread that
    keeps the process from exiting."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flag: asyncio.Event | None = None

    def bind(self) -> asyncio.Event:
        self._loop, self._flag = asyncio.get_running_loop(), asyncio.Event()
        if self.event.is_set():
            self._flag.set()
        return self._flag

    def set(self) -> None:
        self.event.set()
        loop, flag = self._loop, self._flag
        if loop is not None and flag is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to stop
                loop.call_soon_threadsafe(flag.set)


def identity() -> str:
    """``<host>_<pid>``: unique per process, and says which process holds the Lease."""
    return f"{socket.gethostname()}_{os.getpid()}"


async def _operate(
    options: ControllerOptions,
    configuration: kubernetes.client.Configuration,
    *,
    me: str,
    stop: StopSignal,
    metrics: ControllerMetrics,
    health: HealthState,
) -> None:
    api = KubeApi(configuration, on_request=metrics.count_request)
    await api.start()
    try:
        runtime = ControllerRuntime(
            options,
            api=api,
            events=EventRecorder(api, instance=me),
            metrics=metrics,
            health=health,
        )
        await kopf.operator(
            registry=build_registry(runtime, configuration),
            clusterwide=True,
            standalone=True,
            stop_flag=stop.bind(),
        )
    finally:
        await api.close()


def main(argv: Sequence[str]) -> int:
    options = parse_options(argv)
    configure_logging(format=options.log_format, level=options.log_level)
    me = identity()
    logger.info("kopflet controller {} starting as {}", __version__, me)
    try:
        configuration = load_client_configuration(options.kubeconfig)
    except (kubernetes.config.ConfigException, OSError) as error:
        logger.error("no credentials: {} (pass --kubeconfig outside a cluster)", error)
        return 2
    metrics = ControllerMetrics()
    health = HealthState()
    serve_health(health, host=options.bind_address, port=options.health_port)
    serve_metrics(metrics, host=options.bind_address, port=options.metrics_port)

    stop = StopSignal()
    lost = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal {}: stopping", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    elector = None
    if options.leader_elect:
        elector = LeaderElector(
            kubernetes.client.ApiClient(configuration),
            namespace=options.leader_election_namespace,
            name=options.leader_election_name,
            identity=me,
        )
        if not elector.acquire(stop.event):
            return 0

        def on_lost() -> None:
            lost.set()
            stop.set()

        elector.keep_renewing(stop.event, on_lost)
    for s, handler in previous.items():  # kopf installs its own handlers in its event loop
        signal.signal(s, handler)
    metrics.leader.set(1)
    health.standby = False
    try:
        asyncio.run(
            _operate(options, configuration, me=me, stop=stop, metrics=metrics, health=health)
        )
    finally:
        stop.set()
        metrics.leader.set(0)
        if elector is not None and not lost.is_set():
            elector.release()
    if lost.is_set():
        logger.error("leadership lost: exiting so that a fresh process starts as a standby")
        return 1
    return 0
