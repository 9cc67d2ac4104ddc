"""The NodeAgent CRD: one per node, cluster-scoped."""

from __future__ import annotations

from typing import Any

from kopflet.api.constants import NODEAGENT_KIND, NODEAGENT_PLURAL
from kopflet.api.schema._builders import (
    array,
    boolean,
    integer,
    obj,
    quantity_map,
    rule,
    string,
)
from kopflet.api.schema._crd import column, crd
from kopflet.api.schema._instance import conditions


def nodeagent_crd() -> dict[str, Any]:
    spec = obj(
        "Desired state of the node.",
        {
            "instanceCIDR": string(
                "The node's IPv4 instance subnet; allocated by the controller when unset, "
                "immutable once set.",
                max_length=18,
                rules=[
                    rule(
                        "isCIDR(self) && cidr(self).ip().family() == 4 && "
                        "cidr(self) == cidr(self).masked()",
                        "instanceCIDR must be an IPv4 CIDR without host bits, like 10.244.1.0/24",
                    )
                ],
            ),
            "unschedulable": boolean("Keep the scheduler from binding new Instances here."),
        },
        rules=[
            rule(
                "!has(oldSelf.instanceCIDR) || "
                "(has(self.instanceCIDR) && self.instanceCIDR == oldSelf.instanceCIDR)",
                "instanceCIDR is immutable once set",
                field_path=".instanceCIDR",
            )
        ],
    )
    keys = ["cpu", "memory", "instances"]
    status = obj(
        "Observed state of the node, written by its agent.",
        {
            "addresses": array(
                "Addresses of the node.",
                obj(
                    "An address of the node.",
                    {
                        "type": string(
                            "InternalIP, ExternalIP or Hostname.",
                            enum=["InternalIP", "ExternalIP", "Hostname"],
                        ),
                        "address": string("The address.", max_length=253),
                    },
                    required=["type", "address"],
                ),
                max_items=16,
            ),
            "capacity": quantity_map("Total resources of the node.", keys=keys, max_properties=3),
            "allocatable": quantity_map(
                "Resources available to Instances.", keys=keys, max_properties=3
            ),
            "nodeInfo": obj(
                "Versions and modes of the node's software.",
                {
                    "engineVersion": string("Docker engine version.", max_length=128),
                    "kernelVersion": string("Kernel version.", max_length=128),
                    "agentVersion": string("kopflet agent version.", max_length=128),
                    "proxyMode": string(
                        "How service rules are programmed.",
                        enum=["iptables", "nftables", "userspace"],
                    ),
                    "osImage": string("Operating system of the node.", max_length=256),
                    "architecture": string("CPU architecture, like amd64.", max_length=32),
                },
            ),
            "conditions": conditions(),
            "instances": integer("Instances running on the node.", minimum=0),
            "observedGeneration": integer("metadata.generation last acted on.", int64=True),
        },
    )
    return crd(
        kind=NODEAGENT_KIND,
        plural=NODEAGENT_PLURAL,
        short="na",
        scope="Cluster",
        description="A NodeAgent describes one node and its agent: the instance subnet, "
        "addresses, capacity, software versions and conditions. Named after the node.",
        spec=spec,
        status=status,
        spec_required=False,
        columns=[
            column(
                "Status",
                "string",
                '.status.conditions[?(@.type=="Ready")].reason',
                "Reason of the Ready condition: AgentReady, AgentNotReady, NodeStatusUnknown.",
            ),
            column("Subnet", "string", ".spec.instanceCIDR", "Instance subnet of the node."),
            column("Instances", "integer", ".status.instances", "Instances running."),
            column("Version", "string", ".status.nodeInfo.agentVersion", "Agent version."),
            column(
                "Internal-IP",
                "string",
                '.status.addresses[?(@.type=="InternalIP")].address',
                "Internal address of the node.",
                priority=1,
            ),
            column("Unschedulable", "boolean", ".spec.unschedulable", "Cordoned.", priority=1),
        ],
    )
