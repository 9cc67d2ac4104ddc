"""The Instance CRD."""

from __future__ import annotations

from typing import Any

from kopflet.api.constants import INSTANCE_KIND, INSTANCE_PLURAL
from kopflet.api.schema._crd import column, crd
from kopflet.api.schema._instance import instance_spec, instance_status


def instance_crd() -> dict[str, Any]:
    return crd(
        kind=INSTANCE_KIND,
        plural=INSTANCE_PLURAL,
        short="inst",
        scope="Namespaced",
        description="An Instance is one unit a node runs, like a Pod: containers sharing "
        "one network namespace, bound to a node by spec.nodeName.",
        spec=instance_spec("Desired state of the Instance.", bound_node_immutable=True),
        status=instance_status(),
        selectable=[".spec.nodeName"],
        columns=[
            column("Node", "string", ".spec.nodeName", "Node the Instance is bound to."),
            column("Status", "string", ".status.reason", "One-word status, as kubectl get pods."),
            column("Restarts", "integer", ".status.restartCount", "Container restarts."),
            column("IP", "string", ".status.instanceIP", "IP of the Instance."),
            column("Phase", "string", ".status.phase", "Phase of the Instance.", priority=1),
        ],
    )
