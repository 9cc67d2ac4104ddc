"""The ProxyService CRD: a virtual IP, ports, node ports and session affinity."""

from __future__ import annotations

from typing import Any

from kopflet.api.constants import PROXYSERVICE_KIND, PROXYSERVICE_PLURAL
from kopflet.api.schema._builders import (
    DNS_SUBDOMAIN,
    array,
    boolean,
    integer,
    obj,
    rule,
    string,
    string_map,
)
from kopflet.api.schema._containers import number_or_port_name, port_name
from kopflet.api.schema._crd import column, crd
from kopflet.api.schema._instance import conditions


def proxyservice_crd() -> dict[str, Any]:
    service_port = obj(
        "A port of the virtual IP.",
        {
            "name": port_name("Name of the port; required when there are several."),
            "protocol": string("TCP or UDP.", enum=["TCP", "UDP"], default="TCP"),
            "port": integer("Port on the cluster IP.", minimum=1, maximum=65535),
            "targetPort": number_or_port_name(
                "Port on the Instances: a number, or the name of a container port; "
                "the same number as port when unset."
            ),
            "nodePort": integer(
                "Port on every node's addresses (type NodePort only, 30000-32767); "
                "allocated by the controller when unset.",
                minimum=30000,
                maximum=32767,
            ),
        },
        required=["port"],
    )
    ports = array(
        "Ports of the service.",
        service_port,
        max_items=32,
        min_items=1,
        map_keys=["port", "protocol"],
        rules=[
            rule(
                "size(self) == 1 || self.all(p, has(p.name))",
                "every port needs a name when there are several",
            ),
            rule(
                "self.all(p, !has(p.name) || self.exists_one(q, has(q.name) && q.name == p.name))",
                "port names must be unique",
            ),
            rule(
                "self.all(p, !has(p.nodePort) || "
                "self.exists_one(q, has(q.nodePort) && q.nodePort == p.nodePort))",
                "nodePorts must be unique",
            ),
        ],
    )
    spec = obj(
        "Desired state of the ProxyService.",
        {
            "selector": string_map(
                "Labels of the Instances to send traffic to.", max_properties=32, max_length=63
            ),
            "type": string(
                "ClusterIP (a virtual IP) or NodePort (also a port on every node).",
                enum=["ClusterIP", "NodePort"],
                default="ClusterIP",
            ),
            "ports": ports,
            "clusterIP": string(
                "The virtual IPv4 address; allocated by the controller when unset, "
                "immutable once set.",
                max_length=15,
                rules=[
                    rule(
                        "isIP(self) && ip(self).family() == 4",
                        "clusterIP must be an IPv4 address",
                    )
                ],
            ),
            "sessionAffinity": string(
                "None, or ClientIP to send a client to the same Instance every time.",
                enum=["None", "ClientIP"],
                default="None",
            ),
            "sessionAffinityConfig": obj(
                "Settings of ClientIP affinity.",
                {
                    "clientIP": obj(
                        "ClientIP affinity.",
                        {
                            "timeoutSeconds": integer(
                                "Seconds a client stays with one Instance (1..86400).",
                                minimum=1,
                                maximum=86400,
                                default=10800,
                            )
                        },
                    )
                },
            ),
        },
        required=["ports"],
        rules=[
            rule(
                "self.type == 'NodePort' || self.ports.all(p, !has(p.nodePort))",
                "nodePort may only be set when type is NodePort",
                field_path=".ports",
            ),
            rule(
                "!has(self.sessionAffinityConfig) || self.sessionAffinity == 'ClientIP'",
                "sessionAffinityConfig may only be set with sessionAffinity ClientIP",
            ),
            rule(
                "!has(oldSelf.clusterIP) || "
                "(has(self.clusterIP) && self.clusterIP == oldSelf.clusterIP)",
                "clusterIP is immutable once set",
                field_path=".clusterIP",
            ),
        ],
    )
    endpoint = obj(
        "An Instance the service sends traffic to.",
        {
            "ip": string("IP of the Instance.", max_length=64),
            "ready": boolean("Whether the Instance is ready; only ready ones get traffic."),
            "instance": string("Name of the Instance.", pattern=DNS_SUBDOMAIN),
            "nodeName": string("Node the Instance runs on.", pattern=DNS_SUBDOMAIN),
            "ports": array(
                "The service's ports resolved on this Instance (named targetPorts).",
                obj(
                    "A resolved port.",
                    {
                        "name": string("Name of the service port.", max_length=15),
                        "port": integer("Port number on the Instance.", minimum=1, maximum=65535),
                        "protocol": string("TCP or UDP.", enum=["TCP", "UDP"]),
                    },
                    required=["port"],
                ),
                max_items=32,
            ),
        },
        required=["ip", "ready"],
    )
    status = obj(
        "Observed state of the ProxyService, written by the controller.",
        {
            "observedGeneration": integer("metadata.generation last acted on.", int64=True),
            "endpoints": array("Instances selected.", endpoint, max_items=4096),
            "portsSummary": string(
                "port[:nodePort]/protocol list, for the PORTS column.", max_length=1024
            ),
            "endpointsSummary": string(
                "Ready endpoints ip:port, for the ENDPOINTS column.", max_length=1024
            ),
            "conditions": conditions(),
        },
    )
    return crd(
        kind=PROXYSERVICE_KIND,
        plural=PROXYSERVICE_PLURAL,
        short="psvc",
        scope="Namespaced",
        description="A ProxyService is a stable virtual IP (and optional node port) that "
        "load-balances to the ready Instances its selector matches, like a Service.",
        spec=spec,
        status=status,
        columns=[
            column("Type", "string", ".spec.type", "ClusterIP or NodePort."),
            column("Cluster-IP", "string", ".spec.clusterIP", "The virtual IP."),
            column("Ports", "string", ".status.portsSummary", "Ports of the service."),
            column("Endpoints", "string", ".status.endpointsSummary", "Ready endpoints."),
        ],
    )
