"""How watched objects are indexed in memory: each object parsed once per event into its typed
model and filed under every key a reconciler looks it up by. Pure.

kopf keeps these indices from its list+watch streams and guarantees they hold the complete
initial lists before any other handler runs, which is what makes them safe to plan from (an
incomplete cache would make a Workload create Instances it already has).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from loguru import logger

from kopflet.api import Instance, ModelError, NodeAgent, ProxyService, Workload
from kopflet.api.constants import NODE_LEASE_NAMESPACE
from kopflet.controller.instance_state import controller_uid, is_terminating

IndexKey = tuple[Hashable, ...]

ALL: IndexKey = ("all",)
UNBOUND: IndexKey = ("unbound",)


def instance_key(namespace: str, name: str) -> IndexKey:
    return ("instance", namespace, name)


def instances_in(namespace: str) -> IndexKey:
    return ("instances-in", namespace)


def owned_by(uid: str) -> IndexKey:
    return ("owned-by", uid)


def on_node(node: str) -> IndexKey:
    return ("on-node", node)


def workload_key(namespace: str, name: str) -> IndexKey:
    return ("workload", namespace, name)


def service_key(namespace: str, name: str) -> IndexKey:
    return ("service", namespace, name)


def services_in(namespace: str) -> IndexKey:
    return ("services-in", namespace)


def node_key(name: str) -> IndexKey:
    return ("node", name)


def lease_key(name: str) -> IndexKey:
    return ("lease", name)


@dataclass(frozen=True)
class LeaseObservation:
    """A node's heartbeat Lease: only whether it changed matters, so the version is enough."""

    name: str
    resource_version: str
    renew_time: str | None
    holder: str | None


def _meta(body: Mapping[str, Any]) -> Mapping[str, Any]:
    return body.get("metadata") or {}


def parse_instance(body: Mapping[str, Any]) -> Instance:
    """The Instance; if the agent wrote a status this version cannot read, the Instance is still
    indexed without it (counted as not ready) rather than dropped — a dropped Instance would be
    created again."""
    try:
        return Instance.from_dict(body)
    except ModelError as error:
        logger.warning("Instance {}: unreadable status ignored: {}", _meta(body).get("name"), error)
        return Instance.from_dict({k: v for k, v in body.items() if k != "status"})


def index_instance(body: Mapping[str, Any]) -> dict[IndexKey, Instance]:
    instance = parse_instance(body)
    namespace = instance.metadata.namespace or ""
    name = instance.metadata.name or ""
    keys: dict[IndexKey, Instance] = {
        ALL: instance,
        instance_key(namespace, name): instance,
        instances_in(namespace): instance,
    }
    owner = controller_uid(instance)
    if owner:
        keys[owned_by(owner)] = instance
    if instance.spec.node_name:
        keys[on_node(instance.spec.node_name)] = instance
    elif not is_terminating(instance):
        keys[UNBOUND] = instance
    return keys


def index_workload(body: Mapping[str, Any]) -> dict[IndexKey, Workload]:
    workload = Workload.from_dict(body)
    meta = workload.metadata
    return {ALL: workload, workload_key(meta.namespace or "", meta.name or ""): workload}


def index_service(body: Mapping[str, Any]) -> dict[IndexKey, ProxyService]:
    service = ProxyService.from_dict(body)
    namespace, name = service.metadata.namespace or "", service.metadata.name or ""
    return {
        ALL: service,
        service_key(namespace, name): service,
        services_in(namespace): service,
    }


def index_node(body: Mapping[str, Any]) -> dict[IndexKey, NodeAgent]:
    node = NodeAgent.from_dict(body)
    return {ALL: node, node_key(node.metadata.name or ""): node}


def index_lease(body: Mapping[str, Any]) -> dict[IndexKey, LeaseObservation] | None:
    meta = _meta(body)
    if meta.get("namespace") != NODE_LEASE_NAMESPACE:
        return None
    spec = body.get("spec") or {}
    observation = LeaseObservation(
        name=str(meta.get("name", "")),
        resource_version=str(meta.get("resourceVersion", "")),
        renew_time=spec.get("renewTime"),
        holder=spec.get("holderIdentity"),
    )
    return {lease_key(observation.name): observation}
