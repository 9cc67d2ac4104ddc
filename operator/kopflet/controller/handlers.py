"""The controller's kopf handlers, all thin: log in, tune kopf, index every watched object into
memory, and route each watch event to the work queues of the runtime. No handler writes."""

from __future__ import annotations

from typing import Any

import kopf
import kubernetes

from kopflet.api.constants import (
    GROUP,
    INSTANCE_PLURAL,
    NODEAGENT_PLURAL,
    PROXYSERVICE_PLURAL,
    VERSION,
    WORKLOAD_PLURAL,
)
from kopflet.controller import object_index
from kopflet.controller.kopf_settings import tune
from kopflet.controller.kube_api import bearer_token
from kopflet.controller.runtime import INDEX_NAMES, ControllerRuntime

LEASES = ("coordination.k8s.io", "v1", "leases")


def build_registry(
    runtime: ControllerRuntime, configuration: kubernetes.client.Configuration
) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(
            server=str(configuration.host),
            ca_path=configuration.ssl_ca_cert or None,
            insecure=not configuration.verify_ssl,
            token=bearer_token(configuration),
            certificate_path=configuration.cert_file or None,
            private_key_path=configuration.key_file or None,
        )

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
        tune(settings)
        runtime.attach({name: kwargs[name] for name in INDEX_NAMES})
        await runtime.start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await runtime.stop()

    @kopf.index(GROUP, VERSION, INSTANCE_PLURAL, id="instance_index", registry=registry)
    async def instance_index(body: kopf.Body, **_: Any) -> Any:
        return object_index.index_instance(body)

    @kopf.index(GROUP, VERSION, WORKLOAD_PLURAL, id="workload_index", registry=registry)
    async def workload_index(body: kopf.Body, **_: Any) -> Any:
        return object_index.index_workload(body)

    @kopf.index(GROUP, VERSION, PROXYSERVICE_PLURAL, id="service_index", registry=registry)
    async def service_index(body: kopf.Body, **_: Any) -> Any:
        return object_index.index_service(body)

    @kopf.index(GROUP, VERSION, NODEAGENT_PLURAL, id="node_index", registry=registry)
    async def node_index(body: kopf.Body, **_: Any) -> Any:
        return object_index.index_node(body)

    @kopf.index(*LEASES, id="lease_index", registry=registry)
    async def lease_index(body: kopf.Body, **_: Any) -> Any:
        return object_index.index_lease(body)

    @kopf.on.event(GROUP, VERSION, INSTANCE_PLURAL, registry=registry)
    async def instance_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        runtime.on_instance(type, body)

    @kopf.on.event(GROUP, VERSION, WORKLOAD_PLURAL, registry=registry)
    async def workload_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        runtime.on_workload(type, body)

    @kopf.on.event(GROUP, VERSION, PROXYSERVICE_PLURAL, registry=registry)
    async def service_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        runtime.on_service(type, body)

    @kopf.on.event(GROUP, VERSION, NODEAGENT_PLURAL, registry=registry)
    async def node_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        runtime.on_node(type, body)

    @kopf.on.event(*LEASES, registry=registry)
    async def lease_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        runtime.on_lease(type, body)

    @kopf.on.event("v1", "namespaces", registry=registry)
    async def own_namespace_event(**_: Any) -> None:
        # kopf calls event handlers only once every index holds its initial list; the
        # controller's own namespace always exists, so this opens the gate even in a cluster
        # with no objects of ours yet.
        runtime.caches_synced()

    return registry
