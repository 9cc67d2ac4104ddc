"""The Workload CRD: replicas of an Instance template, a selector, a rollout strategy."""

from __future__ import annotations

from typing import Any

from kopflet.api.constants import WORKLOAD_KIND, WORKLOAD_PLURAL
from kopflet.api.schema._builders import (
    Schema,
    array,
    int_or_string,
    integer,
    obj,
    rule,
    string,
    string_map,
)
from kopflet.api.schema._crd import column, crd
from kopflet.api.schema._instance import conditions, instance_spec


def _label_selector() -> Schema:
    requirement = obj(
        "A requirement on one label.",
        {
            "key": string("The label key.", max_length=317),
            "operator": string(
                "In, NotIn, Exists or DoesNotExist.", enum=["In", "NotIn", "Exists", "DoesNotExist"]
            ),
            "values": array(
                "Values for In and NotIn; empty for Exists and DoesNotExist.",
                {"type": "string", "maxLength": 63},
                max_items=32,
            ),
        },
        required=["key", "operator"],
        rules=[
            rule(
                "self.operator in ['In', 'NotIn'] ? has(self.values) && size(self.values) > 0"
                " : !has(self.values) || size(self.values) == 0",
                "In and NotIn need values; Exists and DoesNotExist take none",
            )
        ],
    )
    return obj(
        "Which Instances belong to the Workload; must match the template's labels. Immutable.",
        {
            "matchLabels": string_map(
                "Labels that must all be present with these values.",
                max_properties=32,
                max_length=63,
            ),
            "matchExpressions": array(
                "Requirements that must all hold.", requirement, max_items=16
            ),
        },
        rules=[
            rule("self == oldSelf", "selector is immutable", reason="FieldValueForbidden"),
            rule(
                "(has(self.matchLabels) && size(self.matchLabels) > 0) || "
                "(has(self.matchExpressions) && size(self.matchExpressions) > 0)",
                "selector must not be empty",
            ),
        ],
    )


_SELECTOR_MATCHES_TEMPLATE = (
    "has(self.template.metadata) && has(self.template.metadata.labels) && "
    "(!has(self.selector.matchLabels) || self.selector.matchLabels.all(k, "
    "k in self.template.metadata.labels && "
    "self.template.metadata.labels[k] == self.selector.matchLabels[k])) && "
    "(!has(self.selector.matchExpressions) || self.selector.matchExpressions.all(e, "
    "e.operator == 'In' ? (e.key in self.template.metadata.labels && "
    "e.values.exists(v, v == self.template.metadata.labels[e.key])) : "
    "e.operator == 'NotIn' ? (!(e.key in self.template.metadata.labels) || "
    "!e.values.exists(v, v == self.template.metadata.labels[e.key])) : "
    "e.operator == 'Exists' ? e.key in self.template.metadata.labels : "
    "!(e.key in self.template.metadata.labels)))"
)


def workload_crd() -> dict[str, Any]:
    percent_or_count = (
        "type(self) == int ? self >= 0 : self.matches('^[0-9]{1,3}%$') "
        "&& int(self.replace('%', '')) <= 100"
    )
    rolling = obj(
        "Limits of a rolling update.",
        {
            "maxSurge": int_or_string(
                "Instances above replicas during the update: a count or a percentage (rounded up).",
                default="25%",
                rules=[rule(percent_or_count, "maxSurge must be a count >= 0 or 0%..100%")],
            ),
            "maxUnavailable": int_or_string(
                "Instances below replicas during the update: a count or a percentage "
                "(rounded down).",
                default="25%",
                rules=[rule(percent_or_count, "maxUnavailable must be a count >= 0 or 0%..100%")],
            ),
        },
        rules=[
            rule(
                "!(has(self.maxSurge) && has(self.maxUnavailable) && "
                "(self.maxSurge == 0 || self.maxSurge == '0%') && "
                "(self.maxUnavailable == 0 || self.maxUnavailable == '0%'))",
                "maxSurge and maxUnavailable must not both be 0",
            )
        ],
    )
    strategy = obj(
        "How a template change replaces the Instances.",
        {
            "type": string(
                "RollingUpdate (gradually, within maxSurge/maxUnavailable) or Recreate "
                "(all old Instances stop before new ones start).",
                enum=["RollingUpdate", "Recreate"],
                default="RollingUpdate",
            ),
            "rollingUpdate": rolling,
        },
        default={
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
        },
        rules=[
            rule(
                "!has(self.rollingUpdate) || !has(self.type) || self.type == 'RollingUpdate'",
                "rollingUpdate may only be set with type RollingUpdate",
            )
        ],
    )
    template = obj(
        "The Instances to create, like a Pod template.",
        {
            "metadata": obj(
                "Labels and annotations of every Instance.",
                {
                    "labels": string_map(
                        "Labels; the selector must match them.", max_properties=32, max_length=63
                    ),
                    "annotations": string_map("Annotations.", max_properties=64, max_length=8192),
                },
            ),
            "spec": instance_spec("Spec of every Instance.", bound_node_immutable=False),
        },
        required=["spec"],
    )
    spec = obj(
        "Desired state of the Workload.",
        {
            "replicas": integer("Number of Instances.", minimum=0, default=1),
            "selector": _label_selector(),
            "template": template,
            "strategy": strategy,
            "minReadySeconds": integer(
                "Seconds an Instance must be ready to count as available.", minimum=0, default=0
            ),
            "progressDeadlineSeconds": integer(
                "Seconds a rollout may make no progress before Progressing turns False.",
                minimum=1,
                default=600,
            ),
        },
        required=["selector", "template"],
        rules=[
            rule(
                _SELECTOR_MATCHES_TEMPLATE,
                "selector does not match the template labels",
                field_path=".selector",
            ),
            rule(
                "!has(self.progressDeadlineSeconds) || !has(self.minReadySeconds) || "
                "self.progressDeadlineSeconds > self.minReadySeconds",
                "progressDeadlineSeconds must be greater than minReadySeconds",
            ),
        ],
    )
    status = obj(
        "Observed state of the Workload, written by the controller.",
        {
            "observedGeneration": integer("metadata.generation last acted on.", int64=True),
            "replicas": integer("Instances of any revision that are not terminating."),
            "readyReplicas": integer("Instances that are ready."),
            "availableReplicas": integer("Instances ready for at least minReadySeconds."),
            "updatedReplicas": integer("Instances of the current template."),
            "unavailableReplicas": integer("Instances missing to reach replicas available."),
            "selector": string(
                "The selector in query form, for the scale subresource.", max_length=4096
            ),
            "readySummary": string("readyReplicas/replicas, for the READY column.", max_length=32),
            "conditions": conditions(),
        },
    )
    return crd(
        kind=WORKLOAD_KIND,
        plural=WORKLOAD_PLURAL,
        short="wl",
        scope="Namespaced",
        description="A Workload runs replicas of an Instance template and rolls out "
        "template changes, like a Deployment.",
        spec=spec,
        status=status,
        scale=True,
        columns=[
            column("Ready", "string", ".status.readySummary", "Ready / desired Instances."),
            column("Up-to-date", "integer", ".status.updatedReplicas", "Of the current template."),
            column("Available", "integer", ".status.availableReplicas", "Available Instances."),
        ],
    )
