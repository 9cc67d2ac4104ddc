"""One node's agent: the runtime and proxy engines, wired to the API server.

What runs, all in one event loop:

* the NodeAgent registration and status loop, and the node Lease (heartbeat);
* watches of all NodeAgents (routes to other nodes' subnets; our own spec.instanceCIDR)
  and all ProxyServices, fed to the proxy engine, which programs nothing before both
  are listed;
* once the controller gave the node its instance subnet: the runtime engine, fed by the
  watch of this node's Instances, with the ConfigMaps and Secrets they reference;
* the writers of Instance finalizers and Events, and the health and metrics endpoints.

Stopping the agent (SIGTERM, or a crash) leaves containers and rules as they are; the
next agent adopts them (crash-only, static stability).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import Any

from loguru import logger

from kopflet import __version__
from kopflet.agent.api_reporter import ApiReporter
from kopflet.agent.event_recorder import EventRecorder, EventType, ObjectRef
from kopflet.agent.informer import Informer, Obj, WatchTarget, key_of
from kopflet.agent.instance_feed import InstanceFeed
from kopflet.agent.instance_finalizers import FinalizerWriter
from kopflet.agent.kube_client import KOPFLET_API, KubeClient, object_path
from kopflet.agent.node_environment import detect_node_address, find_sandbox_image
from kopflet.agent.node_lease import NodeLease
from kopflet.agent.node_registration import NodeRegistration
from kopflet.agent.node_status import NodeFacts, go_architecture
from kopflet.agent.observability import HealthCheck, health_app, metrics_app, serve
from kopflet.agent.options import AgentOptions
from kopflet.agent.proxy import ProxyEngine
from kopflet.agent.reference_cache import ReferenceCache
from kopflet.agent.runtime import DockerRuntime, RuntimeConfig, RuntimeEngine
from kopflet.api.constants import (
    API_VERSION,
    INSTANCE_NODE_NAME_FIELD,
    INSTANCE_PLURAL,
    NODEAGENT_KIND,
    NODEAGENT_PLURAL,
    PROXYSERVICE_PLURAL,
)

_FINISHED = frozenset({"Succeeded", "Failed"})
#: How long the engine may stay silent at start before its sandbox image falls back.
ENGINE_RETRY_SECONDS = 2.0


class _NodeAgentsHandler:
    def __init__(self, agent: NodeAgentProcess) -> None:
        self._agent = agent

    async def on_change(self, old: Obj | None, new: Obj | None) -> None:
        self._agent.proxy.on_node(old, new)
        if key_of(new or old or {}) == ("", self._agent.node_name):
            self._agent.registration.observe(new)

    async def on_synced(self, objects: list[Obj]) -> None:
        self._agent.lists_done.add("nodeagents")
        self._agent.maybe_start_proxy()


class _ProxyServicesHandler:
    def __init__(self, agent: NodeAgentProcess) -> None:
        self._agent = agent

    async def on_change(self, old: Obj | None, new: Obj | None) -> None:
        self._agent.proxy.on_service(old, new)

    async def on_synced(self, objects: list[Obj]) -> None:
        self._agent.lists_done.add("proxyservices")
        self._agent.maybe_start_proxy()


class NodeAgentProcess:
    def __init__(self, options: AgentOptions, *, api: KubeClient | None = None) -> None:
        self.options = options
        self.node_name = options.node_name
        self.address = options.node_address or detect_node_address()
        self.api = api or KubeClient.from_kubeconfig(options.kubeconfig)
        self.docker = DockerRuntime(base_url=options.docker_host, node=self.node_name)
        self.proxy = ProxyEngine(
            node_name=self.node_name, mode=options.proxy_mode, policy=options.proxy_policy
        )
        self.events = EventRecorder(self.api, reporting_instance=self.node_name)
        self.finalizers = FinalizerWriter(self.api)
        self.registration = NodeRegistration(
            self.api,
            node_name=self.node_name,
            facts=self.facts,
            period=options.node_status_period,
            events=self._node_event,
        )
        self.lease = NodeLease(
            self.api, node_name=self.node_name, owner_uid=lambda: self.registration.uid
        )
        self.lists_done: set[str] = set()
        self.engine: RuntimeEngine | None = None
        self.feed: InstanceFeed | None = None
        self.runtime_started_at: float | None = None

    def _node_event(self, uid: str, type: EventType, reason: str, message: str) -> None:
        ref = ObjectRef(api_version=API_VERSION, kind=NODEAGENT_KIND, name=self.node_name, uid=uid)
        self.events.record(ref, type=type, reason=reason, message=message)

    # -- facts and health ----------------------------------------------------------------------

    async def facts(self) -> NodeFacts:
        engine_info, error = None, None
        try:
            engine_info = await self.docker.engine_info()
        except Exception as exc:  # unreachable, refused, garbled: the node is not Ready
            error = str(exc) or type(exc).__name__
        instances = 0
        if self.feed is not None:
            instances = sum(
                1
                for i in self.feed.instances
                if not (i.status and i.status.phase in _FINISHED)
                and i.spec.node_name == self.node_name
            )
        return NodeFacts(
            node_name=self.node_name,
            address=self.address,
            agent_version=__version__,
            engine=engine_info,
            engine_error=error,
            runtime_healthy=self._runtime_healthy(),
            instance_cidr=self.registration.instance_cidr,
            proxy_mode=self.options.proxy_mode,
            architecture=go_architecture(),
            instances=instances,
            max_instances=self.options.max_instances,
        )

    def _runtime_healthy(self) -> bool | None:
        """``None`` (no verdict) until the runtime runs and has had its chance to relist."""
        engine = self.engine
        if engine is None or self.runtime_started_at is None:
            return None
        if math.isinf(engine.relist_age()):
            waited = time.time() - self.runtime_started_at
            return None if waited < self.options.relist_threshold else False
        return engine.healthy()

    def health_checks(self) -> list[HealthCheck]:
        def runtime() -> tuple[bool, str]:
            if self.engine is None:
                return True, "not started (waiting for the instance subnet)"
            healthy = self._runtime_healthy()
            if healthy is None:
                return True, "starting (no relist yet)"
            return healthy, f"last relist {self.engine.relist_age():.1f}s ago"

        def proxy() -> tuple[bool, str]:
            last = self.proxy.last_successful_sync
            if last is None:
                return True, "no sync yet (initial lists pending)"
            age = time.time() - last
            limit = 3 * self.options.proxy_policy.full_period
            return age <= limit, f"last successful sync {age:.1f}s ago"

        return [HealthCheck("runtime", runtime), HealthCheck("proxy", proxy)]

    # -- proxy ------------------------------------------------------------------------------

    def maybe_start_proxy(self) -> None:
        if {"nodeagents", "proxyservices"} <= self.lists_done:
            self.proxy.mark_initial_lists_complete()

    # -- runtime ----------------------------------------------------------------------------------

    async def _sandbox_image(self) -> str:
        if self.options.sandbox_image:
            return self.options.sandbox_image
        while True:
            try:
                image = await find_sandbox_image(self.options.docker_host)
            except Exception as exc:  # the engine is not up yet: the node is not Ready
                logger.warning("container engine not answering yet: {}", exc)
                await asyncio.sleep(ENGINE_RETRY_SECONDS)
                continue
            logger.info("sandbox image: {}", image)
            return image

    async def run_runtime(self) -> None:
        cidr = await self.registration.wait_for_instance_cidr()
        sandbox = await self._sandbox_image()
        o = self.options
        config = RuntimeConfig(
            node_name=self.node_name,
            instance_subnet=cidr,
            sandbox_image=sandbox,
            volumes_dir=o.volumes_dir,
            host_ip=self.address,
            allow_privileged=o.allow_privileged,
            allow_host_path=o.allow_host_path,
            allowed_capabilities=o.allowed_capabilities,
            engine_socket=o.docker_host.removeprefix("unix://")
            if o.docker_host.startswith("unix://")
            else None,
            crash_backoff=o.crash_backoff,
            image_backoff=o.image_backoff,
            relist_period_seconds=o.relist_period,
            evented_relist_period_seconds=o.evented_relist_period,
            relist_threshold_seconds=o.relist_threshold,
            resync_period_seconds=o.resync_period,
            termination_message_lines=o.termination_message_lines,
            max_parallel_starts=o.max_parallel_starts,
        )
        o.volumes_dir.mkdir(parents=True, exist_ok=True)
        reporter = ApiReporter(self.api, events=self.events, finalizers=self.finalizers)
        references = ReferenceCache(self.api, on_change=lambda: self._wake_all())
        engine = RuntimeEngine(
            runtime=self.docker,
            config=config,
            resolver=references,
            reporter=reporter,
            on_engine_trouble=self.registration.wake,
        )
        self.engine = engine
        self.feed = InstanceFeed(
            node_name=self.node_name,
            engine=engine,
            references=references,
            finalizers=self.finalizers,
            forgetful=(reporter,),
        )
        instances = Informer(
            self.api,
            WatchTarget(
                path=object_path(KOPFLET_API, INSTANCE_PLURAL),
                field_selector=f"{INSTANCE_NODE_NAME_FIELD}={self.node_name}",
            ),
            self.feed,
            name=f"instances on {self.node_name}",
        )
        logger.info("runtime starting: subnet {}, volumes in {}", cidr, o.volumes_dir)
        self.runtime_started_at = time.time()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(engine.run(), name="runtime-engine")
                group.create_task(instances.run(), name="watch-instances")
                group.create_task(self._resync_proxy_after(engine), name="proxy-after-network")
        finally:
            await references.close()

    async def _resync_proxy_after(self, engine: RuntimeEngine) -> None:
        # Docker puts its FORWARD rules first when it makes the network; ours go back on top
        # now instead of at the next canary check.
        await engine.wait_network_ready()
        self.proxy.request_full_sync()

    def _wake_all(self) -> None:
        if self.engine is not None:
            self.engine.wake_all()

    # -- the whole ------------------------------------------------------------------------------

    async def run(self) -> None:
        o = self.options
        logger.info(
            "kopflet agent {} on node {} ({}), engine {}, proxy mode {}",
            __version__,
            self.node_name,
            self.address,
            o.docker_host,
            o.proxy_mode,
        )
        runners = []
        if o.health_port:
            app = health_app(self.health_checks())
            runners.append(await serve(app, host=o.bind_address, port=o.health_port, what="health"))
        if o.metrics_port:
            runners.append(
                await serve(metrics_app(), host=o.bind_address, port=o.metrics_port, what="metrics")
            )
        node_agents = Informer(
            self.api,
            WatchTarget(path=object_path(KOPFLET_API, NODEAGENT_PLURAL)),
            _NodeAgentsHandler(self),
            name="nodeagents",
        )
        services = Informer(
            self.api,
            WatchTarget(path=object_path(KOPFLET_API, PROXYSERVICE_PLURAL)),
            _ProxyServicesHandler(self),
            name="proxyservices",
        )
        try:
            async with asyncio.TaskGroup() as group:
                tasks: dict[str, Any] = {
                    "node-registration": self.registration.run(),
                    "node-lease": self.lease.run(),
                    "events": self.events.run(),
                    "finalizers": self.finalizers.run(),
                    "watch-nodeagents": node_agents.run(),
                    "watch-proxyservices": services.run(),
                    "proxy-engine": self.proxy.run(),
                    "runtime": self.run_runtime(),
                }
                for name, coroutine in tasks.items():
                    group.create_task(coroutine, name=name)
        finally:
            for runner in runners:
                if runner is not None:
                    with contextlib.suppress(Exception):
                        await runner.cleanup()
            with contextlib.suppress(Exception):
                await self.api.close()
            self.docker.close()
            logger.info("agent stopped; containers and rules stay as they are")
