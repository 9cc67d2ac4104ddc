"""Schemas of an Instance's spec (also a Workload's template spec) and status."""

from __future__ import annotations

from kopflet.api.schema._builders import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    Schema,
    array,
    boolean,
    integer,
    obj,
    one_of,
    quantity,
    rule,
    string,
    string_map,
)
from kopflet.api.schema._containers import container

DATE_TIME = "date-time"


def _key_to_path() -> Schema:
    return obj(
        "Projects one key to a file of the volume.",
        {
            "key": string("The key to project.", min_length=1),
            "path": string(
                "Relative path of the file.",
                max_length=1024,
                rules=[
                    rule(
                        "!self.startsWith('/') && !self.matches('(^|/)[.][.](/|$)')",
                        "path must be relative and must not contain '..'",
                    )
                ],
            ),
            "mode": integer("Mode bits of the file (0 to 0777).", minimum=0, maximum=0o777),
        },
        required=["key", "path"],
    )


def _volume() -> Schema:
    items = array("Keys to project; all keys when unset.", _key_to_path(), max_items=32)
    mode = integer("Mode bits of the files (0 to 0777).", minimum=0, maximum=0o777)
    return obj(
        "A volume the containers can mount; exactly one source is set.",
        {
            "name": string(
                "Name of the volume, unique within the Instance.",
                max_length=63,
                pattern=DNS_LABEL,
            ),
            "emptyDir": obj(
                "A directory that starts empty and lives as long as the Instance.",
                {
                    "medium": string(
                        'Storage medium: "" for the node\'s disk or Memory for a tmpfs.',
                        enum=["", "Memory"],
                    ),
                    "sizeLimit": quantity("Largest size the volume may reach."),
                },
            ),
            "configMap": obj(
                "Files from the keys of a ConfigMap in the Instance's namespace.",
                {
                    "name": string("Name of the ConfigMap.", pattern=DNS_SUBDOMAIN),
                    "items": items,
                    "defaultMode": mode,
                    "optional": boolean("Whether the ConfigMap may be missing."),
                },
                required=["name"],
            ),
            "secret": obj(
                "Files from the keys of a Secret in the Instance's namespace.",
                {
                    "secretName": string("Name of the Secret.", pattern=DNS_SUBDOMAIN),
                    "items": items,
                    "defaultMode": mode,
                    "optional": boolean("Whether the Secret may be missing."),
                },
                required=["secretName"],
            ),
            "hostPath": obj(
                "A file or directory of the node.",
                {
                    "path": string("Absolute path on the node.", max_length=4096, pattern="^/"),
                    "type": string(
                        'What must exist at the path; "" checks nothing.',
                        enum=[
                            "",
                            "DirectoryOrCreate",
                            "Directory",
                            "FileOrCreate",
                            "File",
                            "Socket",
                            "CharDevice",
                            "BlockDevice",
                        ],
                    ),
                },
                required=["path"],
            ),
        },
        required=["name"],
        rules=[
            one_of(
                ["emptyDir", "configMap", "secret", "hostPath"],
                "a volume must set exactly one of emptyDir, configMap, secret, hostPath",
            )
        ],
    )


def instance_spec(description: str, *, bound_node_immutable: bool) -> Schema:
    """The Pod spec subset. ``bound_node_immutable`` adds the rule that a bound
    Instance stays on its node (a Workload template may change ``nodeName``)."""
    rules = [
        rule(
            "self.containers.all(c, !has(c.volumeMounts) || c.volumeMounts.all(m, "
            "has(self.volumes) && self.volumes.exists(v, v.name == m.name)))",
            "a volumeMount names a volume that is not in volumes",
            field_path=".containers",
        ),
    ]
    if bound_node_immutable:
        rules.append(
            rule(
                "!has(oldSelf.nodeName) || "
                "(has(self.nodeName) && self.nodeName == oldSelf.nodeName)",
                "nodeName is immutable once the Instance is bound to a node",
                field_path=".nodeName",
            )
        )
    return obj(
        description,
        {
            "containers": array(
                "Containers of the Instance; they share its network namespace and IP.",
                container(),
                max_items=16,
                min_items=1,
                map_keys=["name"],
            ),
            "volumes": array(
                "Volumes the containers can mount.", _volume(), max_items=32, map_keys=["name"]
            ),
            "restartPolicy": string(
                "When a container that exited is restarted: Always, OnFailure or Never.",
                enum=["Always", "OnFailure", "Never"],
                default="Always",
            ),
            "terminationGracePeriodSeconds": integer(
                "Seconds between SIGTERM and SIGKILL when a container is stopped.",
                minimum=0,
                default=30,
                int64=True,
            ),
            "nodeSelector": string_map(
                "Labels of the NodeAgent the Instance must be scheduled to.",
                max_properties=32,
                max_length=63,
            ),
            "nodeName": string(
                "The node (NodeAgent name) the Instance is bound to; set by the scheduler.",
                pattern=DNS_SUBDOMAIN,
            ),
            "hostname": string(
                "Hostname of the containers; the Instance name when unset.",
                max_length=63,
                pattern=DNS_LABEL,
            ),
        },
        required=["containers"],
        rules=rules,
    )


def condition() -> Schema:
    return obj(
        "A condition of the object (metav1.Condition).",
        {
            "type": string("Type of the condition, like Ready.", max_length=316),
            "status": string("True, False or Unknown.", enum=["True", "False", "Unknown"]),
            "observedGeneration": integer(
                "metadata.generation the condition was computed from.", minimum=0, int64=True
            ),
            "lastTransitionTime": string(
                "When the status last changed.", max_length=64, fmt=DATE_TIME
            ),
            "reason": string("One CamelCase word saying why.", max_length=1024),
            "message": string("Human-readable details.", max_length=32768),
        },
        required=["type", "status"],
    )


def conditions() -> Schema:
    return array("Current conditions.", condition(), max_items=32, map_keys=["type"])


def _container_state() -> Schema:
    text = {
        "reason": string("One word, like CrashLoopBackOff or Completed.", max_length=1024),
        "message": string("Details.", max_length=32768),
    }
    when = "When the container started."
    return obj(
        "State of a container; at most one of waiting, running, terminated is set.",
        {
            "waiting": obj("Not running yet, or waiting to be restarted.", text),
            "running": obj("Running.", {"startedAt": string(when, max_length=64, fmt=DATE_TIME)}),
            "terminated": obj(
                "Exited.",
                {
                    "exitCode": integer("Exit status of the process."),
                    "signal": integer("Signal that ended the process."),
                    **text,
                    "startedAt": string(when, max_length=64, fmt=DATE_TIME),
                    "finishedAt": string("When it exited.", max_length=64, fmt=DATE_TIME),
                    "containerID": string("docker://<id> of the container.", max_length=256),
                },
                required=["exitCode"],
            ),
        },
    )


def instance_status() -> Schema:
    container_status = obj(
        "Status of one container, as the agent observed it in Docker.",
        {
            "name": string("Name of the container.", max_length=63),
            "state": _container_state(),
            "lastState": _container_state(),
            "ready": boolean("Whether the readiness probe succeeds (true without one)."),
            "started": boolean("Whether the startup probe succeeded (true without one)."),
            "restartCount": integer("How often the container was restarted.", minimum=0),
            "image": string("Image of the container spec.", max_length=512),
            "imageID": string("Image ID the container runs.", max_length=512),
            "containerID": string("docker://<id> of the current container.", max_length=256),
            "imagePullPolicy": string(
                "The effective imagePullPolicy the agent applied (the core rule resolved).",
                enum=["Always", "IfNotPresent", "Never"],
            ),
        },
        required=["name", "ready", "restartCount", "image"],
    )
    return obj(
        "Observed state of the Instance, written by the agent of its node.",
        {
            "phase": string(
                "Pending, Running, Succeeded, Failed or Unknown.",
                enum=["Pending", "Running", "Succeeded", "Failed", "Unknown"],
            ),
            "reason": string(
                "One-word summary shown in the STATUS column, like kubectl get pods: "
                "ContainerCreating, Running, CrashLoopBackOff, Completed, Error, Terminating.",
                max_length=128,
            ),
            "message": string("Details of the status.", max_length=32768),
            "conditions": conditions(),
            "containerStatuses": array(
                "Status of each container.", container_status, max_items=16, map_keys=["name"]
            ),
            "instanceIP": string("IP of the Instance on its node's subnet.", max_length=64),
            "hostIP": string("Address of the node the Instance runs on.", max_length=64),
            "startTime": string(
                "When the agent accepted the Instance.", max_length=64, fmt=DATE_TIME
            ),
            "restartCount": integer(
                "Restarts summed over the containers, for the RESTARTS column.", minimum=0
            ),
            "observedGeneration": integer(
                "metadata.generation this status describes.", minimum=0, int64=True
            ),
        },
    )
