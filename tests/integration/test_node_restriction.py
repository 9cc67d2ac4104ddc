"""The node restriction of agent credentials (``manifests/policies``), on the real API server.

Two node identities are made here as the local cluster makes them for its nodes (a Node
object, a placeholder Pod bound to it, a TokenRequest bound to the Pod), under names no running
agent uses; agent A's token then tries to change B's objects, and its own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from conftest import TestCluster
from kopflet.api.constants import (
    API_VERSION,
    GROUP,
    INSTANCE_KIND,
    INSTANCE_PLURAL,
    NODE_LEASE_NAMESPACE,
    NODEAGENT_KIND,
    NODEAGENT_PLURAL,
    SYSTEM_NAMESPACE,
    VERSION,
)
from kopflet.local import node_identity
from kopflet.local.pki import Pki
from support import wait_for

pytestmark = pytest.mark.timeout(240)

FINALIZER = "kopflet.dev/agent"


@dataclass
class Agent:
    """One node's agent credentials, as clients of the API groups it writes."""

    node: str
    client: kubernetes.client.ApiClient

    @property
    def custom(self) -> kubernetes.client.CustomObjectsApi:
        return kubernetes.client.CustomObjectsApi(self.client)

    @property
    def leases(self) -> kubernetes.client.CoordinationV1Api:
        return kubernetes.client.CoordinationV1Api(self.client)

    def patch_instance(
        self, namespace: str, name: str, body: dict[str, Any], *, status: bool = False
    ) -> Any:
        patch = (
            self.custom.patch_namespaced_custom_object_status
            if status
            else self.custom.patch_namespaced_custom_object
        )
        return patch(GROUP, VERSION, namespace, INSTANCE_PLURAL, name, body)

    def patch_node_agent(self, name: str, body: dict[str, Any], *, status: bool = False) -> Any:
        patch = (
            self.custom.patch_cluster_custom_object_status
            if status
            else self.custom.patch_cluster_custom_object
        )
        return patch(GROUP, VERSION, NODEAGENT_PLURAL, name, body)


def _client(cluster: TestCluster, token: str) -> kubernetes.client.ApiClient:
    configuration = kubernetes.client.Configuration()
    configuration.host = cluster.config.apiserver_url
    configuration.ssl_ca_cert = str(Pki(cluster.config.pki_dir).ca_cert)
    configuration.api_key = {"authorization": f"Bearer {token}"}
    return kubernetes.client.ApiClient(configuration)


def _refused(call: Callable[[], object]) -> ApiException:
    """The API server's refusal of ``call``; fails the test if it was allowed."""
    try:
        call()
    except ApiException as error:
        assert error.status in (403, 422), f"unexpected error {error.status}: {error.body}"
        return error
    pytest.fail("the API server allowed what the node restriction must refuse")


def _refused_by_policy(call: Callable[[], object]) -> str:
    """Refused by the node restriction itself, not merely by RBAC."""
    error = _refused(call)
    body = str(error.body)
    assert "kopflet-agent-node-restriction" in body, body
    return body


def _node_agent(name: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": NODEAGENT_KIND,
        "metadata": {"name": name, "labels": {"kopflet.dev/hostname": name}},
        "spec": {},
    }


def _instance(name: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": INSTANCE_KIND,
        "metadata": {"name": name, "labels": {"app": "node-restriction"}},
        "spec": {
            "nodeName": node,
            # The fake nodes run nothing; the Instances only need to exist.
            "containers": [{"name": "c", "image": "kopflet/busybox:local"}],
        },
    }


def _lease(name: str) -> kubernetes.client.V1Lease:
    return kubernetes.client.V1Lease(
        metadata=kubernetes.client.V1ObjectMeta(name=name, namespace=NODE_LEASE_NAMESPACE),
        spec=kubernetes.client.V1LeaseSpec(holder_identity=name, lease_duration_seconds=40),
    )


def _renew(agent: Agent, name: str, *, holder: str) -> Any:
    """Renew Lease ``name`` with ``agent``'s credentials (reading it with the agent's own)."""
    lease = agent.leases.read_namespaced_lease(name, NODE_LEASE_NAMESPACE)
    lease.spec.holder_identity = holder
    lease.spec.renew_time = datetime.now(tz=UTC)
    return agent.leases.replace_namespaced_lease(name, NODE_LEASE_NAMESPACE, lease)


@dataclass
class TwoNodes:
    a: Agent
    b: Agent
    unbound: Agent
    admin: kubernetes.client.ApiClient


@pytest.fixture
def two_nodes(cluster: TestCluster) -> Iterator[TwoNodes]:
    suffix = uuid.uuid4().hex[:6]
    names = [f"nr-{suffix}-a", f"nr-{suffix}-b"]
    admin = cluster.api_client()
    core = kubernetes.client.CoreV1Api(admin)
    custom = kubernetes.client.CustomObjectsApi(admin)
    agents = [
        Agent(
            node=n,
            client=_client(cluster, node_identity.agent_token_for_node(admin, n, seconds=900)),
        )
        for n in names
    ]
    unbound_token = core.create_namespaced_service_account_token(
        node_identity.AGENT_SERVICE_ACCOUNT,
        SYSTEM_NAMESPACE,
        kubernetes.client.AuthenticationV1TokenRequest(
            spec=kubernetes.client.V1TokenRequestSpec(audiences=[], expiration_seconds=900)
        ),
    ).status.token
    unbound = Agent(node="", client=_client(cluster, unbound_token))
    try:
        yield TwoNodes(a=agents[0], b=agents[1], unbound=unbound, admin=admin)
    finally:
        for name in names:
            for delete in (
                lambda n=name: custom.delete_cluster_custom_object(
                    GROUP, VERSION, NODEAGENT_PLURAL, n
                ),
                lambda n=name: kubernetes.client.CoordinationV1Api(admin).delete_namespaced_lease(
                    n, NODE_LEASE_NAMESPACE
                ),
                lambda n=name: core.delete_namespaced_pod(
                    node_identity.identity_pod_name(n), SYSTEM_NAMESPACE, grace_period_seconds=0
                ),
                lambda n=name: core.delete_node(n),
            ):
                try:
                    delete()
                except ApiException as error:
                    if error.status != 404:
                        raise
        for agent in (*agents, unbound):
            agent.client.close()
        admin.close()


@pytest.fixture
def instances(
    cluster: TestCluster, two_nodes: TwoNodes, namespace: str
) -> Iterator[dict[str, str]]:
    """One bare Instance bound to each node; their finalizers are dropped at the end, since no
    agent runs on these nodes to drop them."""
    custom = kubernetes.client.CustomObjectsApi(two_nodes.admin)
    created = {}
    for agent in (two_nodes.a, two_nodes.b):
        name = f"on-{agent.node}"
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, INSTANCE_PLURAL, _instance(name, agent.node)
        )
        created[agent.node] = name
    yield created
    for name in created.values():
        try:
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, INSTANCE_PLURAL, name, {"metadata": {"finalizers": None}}
            )
        except ApiException as error:
            if error.status != 404:
                raise


def test_agent_writes_status_and_finalizers_of_instances_on_its_own_node(
    two_nodes: TwoNodes, instances: dict[str, str], namespace: str
) -> None:
    a = two_nodes.a
    mine = instances[a.node]
    written = a.patch_instance(
        namespace,
        mine,
        {"status": {"phase": "Pending", "reason": "ContainerCreating"}},
        status=True,
    )
    assert written["status"]["reason"] == "ContainerCreating"
    added = a.patch_instance(namespace, mine, {"metadata": {"finalizers": [FINALIZER]}})
    assert FINALIZER in added["metadata"]["finalizers"]
    removed = a.patch_instance(namespace, mine, {"metadata": {"finalizers": None}})
    assert FINALIZER not in (removed["metadata"].get("finalizers") or [])


def test_agent_of_node_a_is_refused_on_instances_of_node_b(
    two_nodes: TwoNodes, instances: dict[str, str], namespace: str
) -> None:
    a, b = two_nodes.a, two_nodes.b
    theirs = instances[b.node]
    message = _refused_by_policy(
        lambda: a.patch_instance(namespace, theirs, {"status": {"reason": "Hijacked"}}, status=True)
    )
    assert f"may only change Instances bound to node {a.node}" in message
    _refused_by_policy(
        lambda: a.patch_instance(namespace, theirs, {"metadata": {"finalizers": [FINALIZER]}})
    )
    # Node B's own agent may, so the refusal above is about the node and nothing else.
    b.patch_instance(namespace, theirs, {"status": {"reason": "ContainerCreating"}}, status=True)
    custom = kubernetes.client.CustomObjectsApi(two_nodes.admin)
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, INSTANCE_PLURAL, theirs)
    assert stored["status"]["reason"] == "ContainerCreating"
    assert FINALIZER not in (stored["metadata"].get("finalizers") or [])


def test_agent_may_not_change_spec_or_labels_of_its_own_instances(
    two_nodes: TwoNodes, instances: dict[str, str], namespace: str
) -> None:
    a = two_nodes.a
    mine = instances[a.node]
    for patch in (
        {"metadata": {"labels": {"app": "someone-else"}}},
        {"metadata": {"annotations": {"note": "from the agent"}}},
        {"spec": {"containers": [{"name": "c", "image": "kopflet/other:local"}]}},
    ):
        message = _refused_by_policy(lambda p=patch: a.patch_instance(namespace, mine, p))
        assert "only the status and the finalizers" in message


def test_agent_of_node_a_is_refused_on_node_b_nodeagent_and_lease(two_nodes: TwoNodes) -> None:
    a, b = two_nodes.a, two_nodes.b
    # Each agent registers its own node, as it does on start.
    for agent in (a, b):
        agent.custom.create_cluster_custom_object(
            GROUP, VERSION, NODEAGENT_PLURAL, _node_agent(agent.node)
        )
        agent.leases.create_namespaced_lease(NODE_LEASE_NAMESPACE, _lease(agent.node))
    a.patch_node_agent(a.node, {"status": {"instances": 0}}, status=True)
    # Renewals are updates (optimistic concurrency), as the agent makes them.
    _renew(a, a.node, holder=a.node)

    message = _refused_by_policy(
        lambda: a.patch_node_agent(b.node, {"status": {"instances": 99}}, status=True)
    )
    assert f"may only change NodeAgent {a.node}" in message
    _refused_by_policy(
        lambda: a.patch_node_agent(b.node, {"metadata": {"labels": {"stolen": "yes"}}})
    )
    message = _refused_by_policy(lambda: _renew(a, b.node, holder=a.node))
    assert f"may only change Lease {NODE_LEASE_NAMESPACE}/{a.node}" in message
    # Nor can it register a node that is not its own, or renew another node's heartbeat.
    _refused_by_policy(
        lambda: a.custom.create_cluster_custom_object(
            GROUP, VERSION, NODEAGENT_PLURAL, _node_agent(f"{b.node}-twin")
        )
    )
    _refused_by_policy(
        lambda: a.leases.create_namespaced_lease(NODE_LEASE_NAMESPACE, _lease(f"{b.node}-twin"))
    )
    lease = kubernetes.client.CoordinationV1Api(two_nodes.admin).read_namespaced_lease(
        b.node, NODE_LEASE_NAMESPACE
    )
    assert lease.spec.holder_identity == b.node


def test_agent_may_not_set_the_spec_of_its_own_nodeagent(two_nodes: TwoNodes) -> None:
    a = two_nodes.a
    _refused_by_policy(
        lambda: a.custom.create_cluster_custom_object(
            GROUP,
            VERSION,
            NODEAGENT_PLURAL,
            {**_node_agent(a.node), "spec": {"instanceCIDR": "10.244.200.0/24"}},
        )
    )
    a.custom.create_cluster_custom_object(GROUP, VERSION, NODEAGENT_PLURAL, _node_agent(a.node))
    message = _refused_by_policy(
        lambda: a.patch_node_agent(a.node, {"spec": {"unschedulable": True}})
    )
    assert "belongs to the controller and the admin" in message
    # Its own labels stay its own (it keeps kopflet.dev/hostname on the object).
    labelled = a.patch_node_agent(
        a.node, {"metadata": {"labels": {"kopflet.dev/hostname": a.node}}}
    )
    assert labelled["metadata"]["labels"]["kopflet.dev/hostname"] == a.node


def test_agent_credentials_without_a_node_change_no_node_objects(
    two_nodes: TwoNodes, instances: dict[str, str], namespace: str
) -> None:
    unbound = two_nodes.unbound
    message = _refused_by_policy(
        lambda: unbound.patch_instance(
            namespace, instances[two_nodes.a.node], {"status": {"reason": "X"}}, status=True
        )
    )
    assert "without a node identity" in message
    _refused_by_policy(
        lambda: unbound.custom.create_cluster_custom_object(
            GROUP, VERSION, NODEAGENT_PLURAL, _node_agent(two_nodes.a.node)
        )
    )
    _refused_by_policy(
        lambda: unbound.leases.create_namespaced_lease(
            NODE_LEASE_NAMESPACE, _lease(two_nodes.a.node)
        )
    )
    # Reading is not restricted: an agent needs every NodeAgent for its routes.
    listed = unbound.custom.list_cluster_custom_object(GROUP, VERSION, NODEAGENT_PLURAL)
    assert isinstance(listed["items"], list)


def test_node_identity_pod_outlives_the_node_lifecycle_controller(
    cluster: TestCluster, two_nodes: TwoNodes
) -> None:
    """The Node never reports, so kube-controller-manager marks it unreachable; the placeholder
    Pod (and with it the token bound to it) must stay."""
    core = kubernetes.client.CoreV1Api(two_nodes.admin)
    node = two_nodes.a.node
    pod_name = node_identity.identity_pod_name(node)
    uid = core.read_namespaced_pod(pod_name, SYSTEM_NAMESPACE).metadata.uid

    def unreachable() -> bool:
        taints = core.read_node(node).spec.taints or []
        return any(t.key == "node.kubernetes.io/unreachable" for t in taints)

    # The node monitor's grace period is 50 s; give it that and its period.
    wait_for(unreachable, timeout=120, interval=2, message=f"Node {node} tainted unreachable")
    # Taint eviction and pod GC run every few seconds: 20 s more of the tainted state.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pod = core.read_namespaced_pod(pod_name, SYSTEM_NAMESPACE)
        assert pod.metadata.uid == uid and pod.metadata.deletion_timestamp is None
        time.sleep(2)
    # The token still authenticates as this node's agent.
    review = kubernetes.client.AuthenticationV1Api(two_nodes.a.client).create_self_subject_review(
        kubernetes.client.V1SelfSubjectReview()
    )
    assert review.status.user_info.extra[node_identity.NODE_NAME_EXTRA] == [node]
