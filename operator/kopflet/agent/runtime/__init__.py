"""The node agent's runtime half: the kubelet role on the node's Docker engine.

How the agent's main loop drives it::

    runtime = DockerRuntime(base_url="unix:///var/run/docker.sock", node=node_name)
    engine = RuntimeEngine(
        runtime=runtime,
        config=RuntimeConfig(node_name=..., instance_subnet=..., sandbox_image=...,
                             volumes_dir=..., host_ip=...),
        resolver=...,   # ReferenceResolver: ConfigMaps and Secrets from the watch cache
        reporter=...,   # RuntimeReporter: patch /status, drop the finalizer, post Events
    )
    task = asyncio.create_task(engine.run())       # until cancelled
    engine.set_desired(instances)   # the complete list of this node's Instances (required
                                    # once before anything is removed: static stability)
    engine.put(instance)            # an Instance added or changed (spec, deletion, rebinding)
    engine.discard(uid)             # an Instance left this node's watch
    engine.wake_all()               # a ConfigMap or Secret changed
    engine.healthy()                # False when the engine's relist is stale (NodeAgent Ready)

Contract:

* The engine is the single writer of the ``status`` of the Instances bound to this node,
  through ``reporter.instance_status``; it writes only what changed.
* An Instance with a ``deletionTimestamp`` is stopped (stop signal, grace period, kill),
  its containers and volumes removed, then ``reporter.instance_cleaned_up`` is called:
  the main loop removes the finalizer there.
* Containers of Instances that are not desired (deleted, bound to another node) are
  stopped with the grace period recorded on them and removed; nothing else is touched.
* Actual state comes only from container labels: a restarted agent adopts what runs.

Layers inside: pure planners and data (``instance_actions``, ``instance_status``,
``relist``, ``backoff``, ``image_pulls``, ``container_config``, ``environment``,
``probes``) below the loop (``engine``, ``sync_instance``, ``probe_manager``) and the
adapters (``docker_runtime``, ``volumes``, ``probe_checks``); ``fake_runtime`` stands in
for Docker in unit tests.
"""

from kopflet.agent.runtime.backoff import BackoffPolicy
from kopflet.agent.runtime.config import RuntimeConfig
from kopflet.agent.runtime.container_runtime import (
    ContainerRuntime,
    EngineInfo,
    RuntimeOperationError,
    RuntimeUnavailable,
)
from kopflet.agent.runtime.docker_runtime import DockerRuntime
from kopflet.agent.runtime.engine import RuntimeEngine
from kopflet.agent.runtime.environment import ReferenceResolver
from kopflet.agent.runtime.fake_runtime import FakeRuntime
from kopflet.agent.runtime.reporting import EventType, InstanceRef, RuntimeReporter

__all__ = [
    "BackoffPolicy",
    "ContainerRuntime",
    "DockerRuntime",
    "EngineInfo",
    "EventType",
    "FakeRuntime",
    "InstanceRef",
    "ReferenceResolver",
    "RuntimeConfig",
    "RuntimeEngine",
    "RuntimeOperationError",
    "RuntimeReporter",
    "RuntimeUnavailable",
]
