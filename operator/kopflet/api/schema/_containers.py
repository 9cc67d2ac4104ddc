"""Schemas of a container, its env, ports, resources and probes: the core field shapes."""

from __future__ import annotations

from kopflet.api.schema._builders import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    Schema,
    array,
    boolean,
    int_or_string,
    integer,
    obj,
    one_of,
    quantity_map,
    rule,
    string,
    string_list,
)

#: IANA service names, what the core API accepts as a port name.
PORT_NAME_RULES = [
    rule(
        "self.matches('[a-z]') && !self.contains('--')",
        "a port name must contain a letter and no '--' (an IANA service name)",
    )
]

_FIELD_PATHS = [
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "status.instanceIP",
    "status.hostIP",
]


def port_name(description: str) -> Schema:
    return string(description, max_length=15, pattern=DNS_LABEL, rules=PORT_NAME_RULES)


def number_or_port_name(description: str) -> Schema:
    return int_or_string(
        description,
        rules=[
            rule(
                "type(self) == int ? self >= 1 && self <= 65535"
                " : size(self) <= 15 && self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')"
                " && self.matches('[a-z]')",
                "must be a port number between 1 and 65535 or the name of a container port",
            )
        ],
    )


def _key_selector(kind: str) -> Schema:
    return obj(
        f"Selects a key of a {kind} in the Instance's namespace.",
        {
            "name": string(f"Name of the {kind}.", pattern=DNS_SUBDOMAIN),
            "key": string(f"The key of the {kind} to select.", max_length=253, min_length=1),
            "optional": boolean(f"Whether the {kind} or its key may be missing."),
        },
        required=["name", "key"],
    )


def _env_var() -> Schema:
    field_ref = obj(
        "Selects a field of the Instance: metadata.name, metadata.namespace, "
        "metadata.uid, metadata.labels['<key>'], metadata.annotations['<key>'], "
        "spec.nodeName, status.instanceIP or status.hostIP.",
        {
            "apiVersion": string("Version of the schema the path is written in.", max_length=64),
            "fieldPath": string(
                "Path of the field to select.",
                max_length=320,
                rules=[
                    rule(
                        f"self in {_FIELD_PATHS!r} || "
                        "self.matches(\"^metadata\\\\.(labels|annotations)\\\\['[^']+'\\\\]$\")",
                        "unsupported fieldPath: use metadata.name, metadata.namespace, "
                        "metadata.uid, metadata.labels['<key>'], metadata.annotations['<key>'], "
                        "spec.nodeName, status.instanceIP or status.hostIP",
                    )
                ],
            ),
        },
        required=["fieldPath"],
    )
    value_from = obj(
        "Source of the variable's value; exactly one reference is set.",
        {
            "configMapKeyRef": _key_selector("ConfigMap"),
            "secretKeyRef": _key_selector("Secret"),
            "fieldRef": field_ref,
        },
        rules=[
            one_of(
                ["configMapKeyRef", "secretKeyRef", "fieldRef"],
                "valueFrom must set exactly one of configMapKeyRef, secretKeyRef, fieldRef",
            )
        ],
    )
    return obj(
        "An environment variable of the container.",
        {
            "name": string(
                "Name of the variable.",
                max_length=256,
                min_length=1,
                pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$",
            ),
            "value": string(
                "The value; $(VAR) references to earlier variables are expanded.",
                max_length=32768,
            ),
            "valueFrom": value_from,
        },
        required=["name"],
        rules=[
            rule(
                "!(has(self.value) && has(self.valueFrom))",
                "value and valueFrom are mutually exclusive",
            )
        ],
    )


def _env_from() -> Schema:
    def ref(kind: str) -> Schema:
        return obj(
            f"The {kind} whose keys become variables.",
            {
                "name": string(f"Name of the {kind}.", pattern=DNS_SUBDOMAIN),
                "optional": boolean(f"Whether the {kind} may be missing."),
            },
            required=["name"],
        )

    return obj(
        "A source of several environment variables: every key of a ConfigMap or Secret.",
        {
            "prefix": string("Prepended to every key.", max_length=253),
            "configMapRef": ref("ConfigMap"),
            "secretRef": ref("Secret"),
        },
        rules=[
            one_of(
                ["configMapRef", "secretRef"],
                "envFrom must set exactly one of configMapRef, secretRef",
            )
        ],
    )


def _container_port() -> Schema:
    return obj(
        "A port the container listens on.",
        {
            "name": port_name("Name of the port, for named targetPorts and probes."),
            "containerPort": integer("Port number in the Instance's IP.", minimum=1, maximum=65535),
            "protocol": string("Protocol of the port.", enum=["TCP", "UDP"], default="TCP"),
            "hostPort": integer(
                "Port number on the node forwarded to this port.", minimum=1, maximum=65535
            ),
            "hostIP": string(
                "Node address the hostPort binds to.",
                max_length=64,
                rules=[rule("isIP(self)", "hostIP must be an IP address")],
            ),
        },
        required=["containerPort"],
    )


def _resources() -> Schema:
    keys = ["cpu", "memory"]
    limits_cover_requests = (
        "!has(self.limits) || !has(self.requests) || self.requests.all(k, "
        "!(k in self.limits) || !isQuantity(string(self.limits[k])) "
        "|| !isQuantity(string(self.requests[k])) || "
        "quantity(string(self.limits[k])).compareTo(quantity(string(self.requests[k]))) >= 0)"
    )
    return obj(
        "Compute resources: requests are reserved for scheduling, limits are enforced. "
        "A resource with a limit and no request requests its limit.",
        {
            "requests": quantity_map(
                "Minimum resources the container needs (cpu, memory).", keys=keys, max_properties=2
            ),
            "limits": quantity_map(
                "Maximum resources the container may use (cpu, memory).",
                keys=keys,
                max_properties=2,
            ),
        },
        rules=[rule(limits_cover_requests, "every limit must be >= its request")],
    )


def probe(kind: str) -> Schema:
    """``kind`` is liveness, readiness or startup; only readiness may succeed > 1 times."""
    port = number_or_port_name("Port number or name of a container port.")
    handlers: dict[str, Schema] = {
        "exec": obj(
            "Runs a command in the container; exit status 0 is success.",
            {"command": string_list("Command and arguments (no shell).", max_items=64)},
            required=["command"],
        ),
        "httpGet": obj(
            "An HTTP GET to the Instance's IP; a status in 200..399 is success.",
            {
                "path": string("Request path.", max_length=2048, default="/"),
                "port": port,
                "host": string("Host to connect to instead of the Instance IP.", max_length=253),
                "scheme": string("HTTP or HTTPS.", enum=["HTTP", "HTTPS"], default="HTTP"),
                "httpHeaders": array(
                    "Headers to send.",
                    obj(
                        "An HTTP header.",
                        {
                            "name": string("Header name.", max_length=256),
                            "value": string("Header value.", max_length=4096),
                        },
                        required=["name", "value"],
                    ),
                    max_items=32,
                ),
            },
            required=["port"],
        ),
        "tcpSocket": obj(
            "A TCP connection to the port; success when it opens.",
            {
                "port": port,
                "host": string("Host to connect to instead of the Instance IP.", max_length=253),
            },
            required=["port"],
        ),
    }
    only_one = f"{kind}Probe must set exactly one of exec, httpGet, tcpSocket"
    rules = [one_of(list(handlers), only_one)]
    if kind != "readiness":
        rules.append(
            rule(
                "!has(self.successThreshold) || self.successThreshold == 1",
                f"{kind}Probe.successThreshold must be 1",
                field_path=".successThreshold",
            )
        )
    timings: dict[str, Schema] = {
        "initialDelaySeconds": integer(
            "Seconds after the container started before the first probe.", minimum=0, default=0
        ),
        "timeoutSeconds": integer("Seconds before a probe times out.", minimum=1, default=1),
        "periodSeconds": integer("Seconds between two probes.", minimum=1, default=10),
        "successThreshold": integer(
            "Consecutive successes to count as success after a failure"
            + ("." if kind == "readiness" else "; must be 1."),
            minimum=1,
            default=1,
        ),
        "failureThreshold": integer(
            "Consecutive failures to count as failure.", minimum=1, default=3
        ),
        "terminationGracePeriodSeconds": integer(
            "Grace period when a failed probe kills the container; overrides the Instance's.",
            minimum=1,
            int64=True,
        ),
    }
    description = {
        "liveness": "Restarts the container when it fails.",
        "readiness": "Takes the Instance out of ProxyService endpoints while it fails.",
        "startup": "Holds the other probes until it succeeds once; restarts the container "
        "when it fails.",
    }[kind]
    return obj(description, {**handlers, **timings}, rules=rules)


def _security_context() -> Schema:
    capability = string("A Linux capability, like NET_ADMIN.", max_length=64, pattern=r"^[A-Z_]+$")
    return obj(
        "Security options of the container (the subset Docker can honour).",
        {
            "runAsUser": integer("UID the process runs as.", minimum=0, int64=True),
            "runAsGroup": integer("GID the process runs as.", minimum=0, int64=True),
            "runAsNonRoot": boolean("Refuse to start the container as UID 0."),
            "privileged": boolean("Run privileged (every capability, every device)."),
            "readOnlyRootFilesystem": boolean("Mount the root filesystem read-only."),
            "allowPrivilegeEscalation": boolean("Whether a process can gain privileges."),
            "capabilities": obj(
                "Capabilities added to or dropped from the default set.",
                {
                    "add": array("Capabilities to add.", capability, max_items=64),
                    "drop": array("Capabilities to drop.", capability, max_items=64),
                },
            ),
        },
        rules=[
            rule(
                "!(has(self.privileged) && self.privileged"
                " && has(self.allowPrivilegeEscalation) && !self.allowPrivilegeEscalation)",
                "cannot set allowPrivilegeEscalation to false and privileged to true",
            )
        ],
    )


def _volume_mount() -> Schema:
    return obj(
        "Mounts a volume of the Instance into the container.",
        {
            "name": string("Name of a volume of the Instance.", max_length=63, pattern=DNS_LABEL),
            "mountPath": string("Absolute path in the container.", max_length=4096, pattern="^/"),
            "readOnly": boolean("Mount read-only."),
            "subPath": string(
                "Path inside the volume to mount instead of its root.",
                max_length=4096,
                rules=[
                    rule(
                        "!self.startsWith('/') && !self.matches('(^|/)[.][.](/|$)')",
                        "subPath must be a relative path without '..'",
                    )
                ],
            ),
        },
        required=["name", "mountPath"],
    )


def _named_port_exists(probe_field: str) -> Schema:
    """A probe that names its port names a port of the same container."""
    checks = " && ".join(
        f"(!has(self.{probe_field}.{h}) || type(self.{probe_field}.{h}.port) == int || "
        f"(has(self.ports) && self.ports.exists(p, has(p.name) && "
        f"p.name == self.{probe_field}.{h}.port)))"
        for h in ("httpGet", "tcpSocket")
    )
    return rule(
        f"!has(self.{probe_field}) || ({checks})",
        f"{probe_field} names a port that the container does not declare",
    )


def container() -> Schema:
    ports = array(
        "Ports the container listens on.",
        _container_port(),
        max_items=32,
        map_keys=["containerPort", "protocol"],
        rules=[
            rule(
                "self.all(p, !has(p.name) || self.exists_one(q, has(q.name) && q.name == p.name))",
                "port names must be unique within a container",
            )
        ],
    )
    return obj(
        "A container of the Instance. Field names and meanings follow the core Container.",
        {
            "name": string(
                "Name of the container, unique within the Instance.",
                max_length=63,
                pattern=DNS_LABEL,
            ),
            "image": string("Image reference.", max_length=512, min_length=1),
            "imagePullPolicy": string(
                "Always, IfNotPresent or Never. When unset the core rule applies: an image "
                "tagged :latest or untagged is Always, any other IfNotPresent; the agent "
                "resolves it and reports it in status.containerStatuses[].imagePullPolicy.",
                enum=["Always", "IfNotPresent", "Never"],
            ),
            "command": string_list("Entrypoint; replaces the image's ENTRYPOINT.", max_items=256),
            "args": string_list("Arguments; replace the image's CMD.", max_items=256),
            "workingDir": string("Working directory of the process.", max_length=4096),
            "env": array(
                "Environment variables, set in this order.",
                _env_var(),
                max_items=128,
                map_keys=["name"],
            ),
            "envFrom": array(
                "Sources of many variables; env wins on conflicts.", _env_from(), max_items=32
            ),
            "ports": ports,
            "resources": _resources(),
            "volumeMounts": array(
                "Volumes to mount.", _volume_mount(), max_items=32, map_keys=["mountPath"]
            ),
            "livenessProbe": probe("liveness"),
            "readinessProbe": probe("readiness"),
            "startupProbe": probe("startup"),
            "securityContext": _security_context(),
        },
        required=["name", "image"],
        rules=[
            _named_port_exists("livenessProbe"),
            _named_port_exists("readinessProbe"),
            _named_port_exists("startupProbe"),
        ],
    )
