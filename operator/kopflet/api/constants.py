"""Names shared by every component: API group, kinds, labels. Pure data."""

from typing import Final

GROUP: Final = "kopflet.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

WORKLOAD_PLURAL: Final = "workloads"
INSTANCE_PLURAL: Final = "instances"
PROXYSERVICE_PLURAL: Final = "proxyservices"
NODEAGENT_PLURAL: Final = "nodeagents"

#: The namespace the controller and the agents run in.
SYSTEM_NAMESPACE: Final = "kopflet-system"
#: Leases of the node agents live here, one per node, like kube-node-lease.
NODE_LEASE_NAMESPACE: Final = "kopflet-node-lease"

#: Label the scheduler puts on an Instance together with ``spec.nodeName``, so an
#: agent can watch only its own node's Instances with a server-side label selector.
NODE_NAME_LABEL: Final = "kopflet.dev/node-name"
#: The agent's finalizer on its node's Instances: the object stays until the node's
#: containers of it are gone. The scheduler puts it on with the binding (one write less
#: than the agent adding it); the agent adds it to an Instance bound any other way. The
#: controller releases ``kopflet.dev/``-prefixed finalizers itself only for Instances of a
#: node that is gone.
AGENT_FINALIZER: Final = "kopflet.dev/agent"
#: Template hash of the Workload revision an Instance belongs to.
TEMPLATE_HASH_LABEL: Final = "kopflet.dev/template-hash"

WORKLOAD_KIND: Final = "Workload"
INSTANCE_KIND: Final = "Instance"
PROXYSERVICE_KIND: Final = "ProxyService"
NODEAGENT_KIND: Final = "NodeAgent"

#: ``kubectl get kopflet`` lists every kind of ours.
CATEGORY: Final = "kopflet"

#: Instances can be watched per node with ``fieldSelector=spec.nodeName=<node>``
#: (a ``selectableFields`` entry of the Instance CRD).
INSTANCE_NODE_NAME_FIELD: Final = "spec.nodeName"

# Condition types, as in the core API.
CONDITION_READY: Final = "Ready"
CONDITION_CONTAINERS_READY: Final = "ContainersReady"
CONDITION_SCHEDULED: Final = "Scheduled"
CONDITION_INITIALIZED: Final = "Initialized"
CONDITION_AVAILABLE: Final = "Available"
CONDITION_PROGRESSING: Final = "Progressing"

#: Reasons of a NodeAgent's Ready condition; the NodeAgent STATUS column prints
#: the reason, so these read as a node status (like kubelet's ``KubeletReady``).
NODE_READY_REASON: Final = "AgentReady"
NODE_NOT_READY_REASON: Final = "AgentNotReady"
NODE_STATUS_UNKNOWN_REASON: Final = "NodeStatusUnknown"
