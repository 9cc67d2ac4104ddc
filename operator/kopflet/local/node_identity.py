"""Per-node agent credentials on the local cluster, made the way a kind cluster makes them.

In a cluster with kubelets, an agent Pod of the DaemonSet gets a ServiceAccount token bound to
that Pod; since Kubernetes 1.32 such a token carries the Pod's node in
``user.extra["authentication.kubernetes.io/node-name"]``, and the node-restriction policy in
``manifests/policies`` lets those credentials change only that node's objects.

The local cluster has no kubelets, so it emulates what they would have: for every node a core
``Node`` object (only the object) and a placeholder Pod of the ``kopflet-agent``
ServiceAccount bound to it, then a TokenRequest bound to that Pod. The Pod never runs:

* nothing pulls its image (no kubelet, and ``imagePullPolicy: Never``);
* the Node never posts status, so the node lifecycle controller taints it unreachable; the Pod
  tolerates that (and not-ready) without ``tolerationSeconds``, so taint eviction never deletes
  it — deleting it would invalidate the token, whose validation checks the Pod's UID;
* pod GC deletes Pods whose Node is missing: the Node object is what keeps it.
"""

from __future__ import annotations

import time
from typing import Any, Final

import kubernetes
from kubernetes.client.exceptions import ApiException

from kopflet.api.constants import SYSTEM_NAMESPACE

AGENT_SERVICE_ACCOUNT: Final = "kopflet-agent"
#: The claim the API server derives from a Pod-bound token (``serviceaccount.NodeNameKey``).
NODE_NAME_EXTRA: Final = "authentication.kubernetes.io/node-name"
#: Never pulled and never run: only the Pod object matters.
PLACEHOLDER_IMAGE: Final = "kopflet/node-identity:never-run"
IDENTITY_COMPONENT: Final = "agent-identity"
_DELETE_WAIT_SECONDS: Final = 60.0


def identity_pod_name(node_name: str) -> str:
    return f"kopflet-agent-{node_name}"


def node_body(node_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node_name,
            "labels": {
                "kubernetes.io/hostname": node_name,
                "app.kubernetes.io/part-of": "kopflet",
            },
        },
        # Nothing else may be scheduled here: no kubelet would ever run it.
        "spec": {"unschedulable": True},
    }


def identity_pod_body(node_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": identity_pod_name(node_name),
            "namespace": SYSTEM_NAMESPACE,
            "labels": {
                "app.kubernetes.io/part-of": "kopflet",
                "app.kubernetes.io/component": IDENTITY_COMPONENT,
                "kopflet.dev/hostname": node_name,
            },
            "annotations": {
                "kopflet.dev/purpose": "holds the node identity of this node's agent token; "
                "never runs (no kubelet on the local cluster)",
            },
        },
        "spec": {
            "nodeName": node_name,
            "serviceAccountName": AGENT_SERVICE_ACCOUNT,
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "placeholder",
                    "image": PLACEHOLDER_IMAGE,
                    "imagePullPolicy": "Never",
                }
            ],
            # No tolerationSeconds: taint eviction keeps these Pods forever on a Node that
            # never reports (DefaultTolerationSeconds would otherwise add 300 s).
            "tolerations": [
                {"key": key, "operator": "Exists", "effect": "NoExecute"}
                for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
            ],
        },
    }


def _create_or_get(create: Any, read: Any, body: dict[str, Any]) -> Any:
    try:
        return create(body)
    except ApiException as error:
        if error.status != 409:
            raise
    return read()


def ensure_node(core: kubernetes.client.CoreV1Api, node_name: str) -> Any:
    return _create_or_get(core.create_node, lambda: core.read_node(node_name), node_body(node_name))


def ensure_identity_pod(core: kubernetes.client.CoreV1Api, node_name: str) -> Any:
    """The placeholder Pod of ``node_name``; one being deleted (an earlier run's, or removed by
    hand) is waited out and made again, since a token bound to it would die with it."""
    name = identity_pod_name(node_name)
    deadline = time.monotonic() + _DELETE_WAIT_SECONDS
    while True:
        pod = _create_or_get(
            lambda body: core.create_namespaced_pod(SYSTEM_NAMESPACE, body),
            lambda: core.read_namespaced_pod(name, SYSTEM_NAMESPACE),
            identity_pod_body(node_name),
        )
        if pod.metadata.deletion_timestamp is None and pod.spec.node_name == node_name:
            return pod
        if pod.metadata.deletion_timestamp is None:
            core.delete_namespaced_pod(name, SYSTEM_NAMESPACE, grace_period_seconds=0)
        if time.monotonic() > deadline:
            raise RuntimeError(f"identity Pod {SYSTEM_NAMESPACE}/{name} is not going away")
        time.sleep(0.5)


def node_bound_token(
    core: kubernetes.client.CoreV1Api, *, node_name: str, pod: Any, seconds: int
) -> str:
    """A ``kopflet-agent`` token bound to the node's identity Pod: the API server puts the
    Pod's node into the token, and authenticates it as that node's agent."""
    request = kubernetes.client.AuthenticationV1TokenRequest(
        spec=kubernetes.client.V1TokenRequestSpec(
            audiences=[],
            expiration_seconds=seconds,
            bound_object_ref=kubernetes.client.V1BoundObjectReference(
                api_version="v1", kind="Pod", name=pod.metadata.name, uid=pod.metadata.uid
            ),
        )
    )
    response = core.create_namespaced_service_account_token(
        AGENT_SERVICE_ACCOUNT, SYSTEM_NAMESPACE, request
    )
    if response.status is None or not response.status.token:
        raise RuntimeError(f"no token issued for the agent of {node_name}")
    return str(response.status.token)


def agent_token_for_node(api: kubernetes.client.ApiClient, node_name: str, *, seconds: int) -> str:
    """Node object, placeholder Pod and a token bound to it, for the agent of ``node_name``."""
    core = kubernetes.client.CoreV1Api(api)
    ensure_node(core, node_name)
    pod = ensure_identity_pod(core, node_name)
    return node_bound_token(core, node_name=node_name, pod=pod, seconds=seconds)
