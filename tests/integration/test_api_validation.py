"""Bad objects are refused by the API server itself, at ``kubectl apply``, with a message
that says what is wrong — by the schema or by a CEL rule — and nothing of them is stored."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from conftest import TestCluster

Obj = dict[str, Any]


def workload(name: str) -> Obj:
    return {
        "apiVersion": "kopflet.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "v"}},
            "template": {
                "metadata": {"labels": {"app": "v", "tier": "a"}},
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": "kopflet/busybox:local",
                            "ports": [{"name": "http", "containerPort": 8080}],
                        }
                    ]
                },
            },
        },
    }


def instance(name: str) -> Obj:
    return {
        "apiVersion": "kopflet.dev/v1alpha1",
        "kind": "Instance",
        "metadata": {"name": name},
        "spec": {
            # Bound to a node that does not exist, so nothing runs it.
            "nodeName": "no-such-node",
            "containers": [
                {
                    "name": "main",
                    "image": "kopflet/busybox:local",
                    "ports": [{"name": "http", "containerPort": 8080}],
                }
            ],
        },
    }


def proxyservice(name: str) -> Obj:
    return {
        "apiVersion": "kopflet.dev/v1alpha1",
        "kind": "ProxyService",
        "metadata": {"name": name},
        "spec": {
            "selector": {"app": "v"},
            "clusterIP": "10.96.200.10",
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }


def nodeagent(name: str) -> Obj:
    return {
        "apiVersion": "kopflet.dev/v1alpha1",
        "kind": "NodeAgent",
        "metadata": {"name": name},
        "spec": {"instanceCIDR": "10.250.7.0/24", "unschedulable": True},
    }


def container(o: Obj) -> Obj:
    spec = o["spec"]["template"]["spec"] if o["kind"] == "Workload" else o["spec"]
    c: Obj = spec["containers"][0]
    return c


@dataclass(frozen=True)
class Case:
    id: str
    base: Callable[[str], Obj]
    change: Callable[[Obj], object]
    fragment: str
    #: False: the changed object is created. True: the base is created, then updated.
    update: bool = False


def _set(path: str, value: Any) -> Callable[[Obj], None]:
    """``spec.a.b=value`` on the object (numeric parts index lists)."""

    def change(o: Obj) -> None:
        *parents, last = path.split(".")
        node: Any = o
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value

    return change


def _in_container(**fields: Any) -> Callable[[Obj], None]:
    return lambda o: container(o).update(fields)


def _probe(kind: str, probe: Obj) -> Callable[[Obj], None]:
    return lambda o: container(o).update({kind: probe})


def _resources(resources: Obj) -> Callable[[Obj], None]:
    return lambda o: container(o).update({"resources": resources})


def _two_containers_named_main(o: Obj) -> None:
    c = container(o)
    o["spec"]["containers"].append({**copy.deepcopy(c), "ports": []})


TS = "spec.template.spec"
# fmt: off
CASES = [
    # --- Workload
    Case("selector-not-matching-template", workload,
         _set("spec.selector.matchLabels", {"app": "other"}),
         "selector does not match the template labels"),
    Case("selector-expression-not-matching", workload,
         _set("spec.selector.matchExpressions",
              [{"key": "tier", "operator": "In", "values": ["b"]}]),
         "selector does not match the template labels"),
    Case("selector-empty", workload, _set("spec.selector", {}), "selector must not be empty"),
    Case("selector-in-without-values", workload,
         _set("spec.selector.matchExpressions", [{"key": "tier", "operator": "In"}]),
         "In and NotIn need values"),
    Case("selector-changed", workload,
         _set("spec.selector.matchLabels", {"app": "v", "tier": "a"}),
         "selector is immutable", update=True),
    Case("replicas-negative", workload, _set("spec.replicas", -1),
         "should be greater than or equal to 0"),
    Case("template-missing", workload, lambda o: o["spec"].pop("template"),
         "spec.template: Required value"),
    Case("strategy-unknown", workload, _set("spec.strategy", {"type": "BlueGreen"}),
         'Unsupported value: "BlueGreen"'),
    Case("recreate-with-rolling-update", workload,
         _set("spec.strategy", {"type": "Recreate", "rollingUpdate": {"maxSurge": 1}}),
         "rollingUpdate may only be set with type RollingUpdate"),
    Case("max-surge-over-100-percent", workload,
         _set("spec.strategy", {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "150%"}}),
         "maxSurge must be a count >= 0 or 0%..100%"),
    Case("surge-and-unavailable-both-zero", workload,
         _set("spec.strategy", {"type": "RollingUpdate",
                                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}}),
         "maxSurge and maxUnavailable must not both be 0"),
    Case("progress-deadline-below-min-ready", workload,
         lambda o: o["spec"].update(minReadySeconds=30, progressDeadlineSeconds=10),
         "progressDeadlineSeconds must be greater than minReadySeconds"),
    Case("template-restart-policy-unknown", workload, _set(f"{TS}.restartPolicy", "Sometimes"),
         'Unsupported value: "Sometimes"'),
    Case("template-mount-of-missing-volume", workload,
         _in_container(volumeMounts=[{"name": "data", "mountPath": "/data"}]),
         "a volumeMount names a volume that is not in volumes"),
    # --- Instance: containers
    Case("no-containers", instance, _set("spec.containers", []),
         "should have at least 1 items"),
    Case("duplicate-container-names", instance, _two_containers_named_main, "Duplicate value"),
    Case("container-name-not-a-dns-label", instance, _in_container(name="Main_1"),
         "spec.containers[0].name in body should match"),
    Case("container-without-image", instance, lambda o: container(o).pop("image"),
         "spec.containers[0].image: Required value"),
    Case("image-pull-policy-unknown", instance, _in_container(imagePullPolicy="Sometimes"),
         'Unsupported value: "Sometimes"'),
    Case("unknown-field", instance, _in_container(imagePullSecrets=[{"name": "x"}]),
         'unknown field "spec.containers[0].imagePullSecrets"'),
    Case("container-port-out-of-range", instance,
         _in_container(ports=[{"containerPort": 70000}]),
         "should be less than or equal to 65535"),
    Case("duplicate-port-names", instance,
         _in_container(ports=[{"name": "http", "containerPort": 80},
                              {"name": "http", "containerPort": 81}]),
         "port names must be unique within a container"),
    Case("port-name-without-letter", instance,
         _in_container(ports=[{"name": "8080", "containerPort": 8080}]),
         "a port name must contain a letter"),
    # --- Instance: resources
    Case("quantity-not-a-quantity", instance, _resources({"requests": {"cpu": "lots"}}),
         "must be a non-negative quantity"),
    Case("quantity-negative", instance, _resources({"limits": {"memory": "-64Mi"}}),
         "must be a non-negative quantity"),
    Case("limit-below-request", instance,
         _resources({"requests": {"memory": "128Mi"}, "limits": {"memory": "64Mi"}}),
         "every limit must be >= its request"),
    Case("cpu-limit-below-request-across-suffixes", instance,
         _resources({"requests": {"cpu": 1}, "limits": {"cpu": "500m"}}),
         "every limit must be >= its request"),
    Case("unsupported-resource", instance, _resources({"limits": {"nvidia.com/gpu": 1}}),
         "only these resources are supported: cpu, memory"),
    # --- Instance: probes
    Case("liveness-success-threshold", instance,
         _probe("livenessProbe", {"tcpSocket": {"port": 8080}, "successThreshold": 2}),
         "livenessProbe.successThreshold must be 1"),
    Case("startup-success-threshold", instance,
         _probe("startupProbe", {"exec": {"command": ["true"]}, "successThreshold": 3}),
         "startupProbe.successThreshold must be 1"),
    Case("probe-with-two-handlers", instance,
         _probe("readinessProbe", {"exec": {"command": ["true"]}, "tcpSocket": {"port": 80}}),
         "readinessProbe must set exactly one of exec, httpGet, tcpSocket"),
    Case("probe-without-handler", instance, _probe("livenessProbe", {"periodSeconds": 5}),
         "livenessProbe must set exactly one of exec, httpGet, tcpSocket"),
    Case("probe-names-undeclared-port", instance,
         _probe("livenessProbe", {"httpGet": {"port": "metrics"}}),
         "livenessProbe names a port that the container does not declare"),
    Case("probe-period-zero", instance,
         _probe("readinessProbe", {"tcpSocket": {"port": 80}, "periodSeconds": 0}),
         "should be greater than or equal to 1"),
    # --- Instance: env
    Case("env-value-and-value-from", instance,
         _in_container(env=[{"name": "A", "value": "x",
                             "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]),
         "value and valueFrom are mutually exclusive"),
    Case("env-two-sources", instance,
         _in_container(env=[{"name": "A", "valueFrom": {
             "configMapKeyRef": {"name": "c", "key": "k"},
             "secretKeyRef": {"name": "s", "key": "k"}}}]),
         "valueFrom must set exactly one of configMapKeyRef, secretKeyRef, fieldRef"),
    Case("env-field-ref-unsupported", instance,
         _in_container(env=[{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "spec.x"}}}]),
         "unsupported fieldPath"),
    Case("env-from-without-source", instance, _in_container(envFrom=[{"prefix": "X_"}]),
         "envFrom must set exactly one of configMapRef, secretRef"),
    # --- Instance: volumes and the rest
    Case("mount-of-missing-volume", instance,
         _in_container(volumeMounts=[{"name": "data", "mountPath": "/data"}]),
         "a volumeMount names a volume that is not in volumes"),
    Case("duplicate-volume-names", instance,
         _set("spec.volumes", [{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}]),
         "Duplicate value"),
    Case("volume-with-two-sources", instance,
         _set("spec.volumes", [{"name": "v", "emptyDir": {}, "hostPath": {"path": "/tmp"}}]),
         "a volume must set exactly one of emptyDir, configMap, secret, hostPath"),
    Case("host-path-relative", instance,
         _set("spec.volumes", [{"name": "v", "hostPath": {"path": "tmp"}}]),
         "spec.volumes[0].hostPath.path in body should match '^/'"),
    Case("restart-policy-unknown", instance, _set("spec.restartPolicy", "Sometimes"),
         'Unsupported value: "Sometimes"'),
    Case("grace-period-negative", instance, _set("spec.terminationGracePeriodSeconds", -5),
         "should be greater than or equal to 0"),
    Case("privileged-without-escalation", instance,
         _in_container(securityContext={"privileged": True,
                                        "allowPrivilegeEscalation": False}),
         "cannot set allowPrivilegeEscalation to false and privileged to true"),
    Case("node-name-changed", instance, _set("spec.nodeName", "another-node"),
         "nodeName is immutable once the Instance is bound to a node", update=True),
    Case("node-name-removed", instance, lambda o: o["spec"].pop("nodeName"),
         "nodeName is immutable once the Instance is bound to a node", update=True),
    # --- ProxyService
    Case("node-port-on-cluster-ip", proxyservice, _set("spec.ports.0.nodePort", 30080),
         "nodePort may only be set when type is NodePort"),
    Case("node-port-below-range", proxyservice,
         lambda o: o["spec"].update(type="NodePort", ports=[{"port": 80, "nodePort": 8080}]),
         "should be greater than or equal to 30000"),
    Case("node-port-above-range", proxyservice,
         lambda o: o["spec"].update(type="NodePort", ports=[{"port": 80, "nodePort": 32768}]),
         "should be less than or equal to 32767"),
    Case("duplicate-node-ports", proxyservice,
         lambda o: o["spec"].update(type="NodePort", ports=[
             {"name": "a", "port": 80, "nodePort": 30100},
             {"name": "b", "port": 81, "nodePort": 30100}]),
         "nodePorts must be unique"),
    Case("service-type-unknown", proxyservice, _set("spec.type", "LoadBalancer"),
         'Unsupported value: "LoadBalancer"'),
    Case("protocol-unknown", proxyservice, _set("spec.ports.0.protocol", "SCTP"),
         'Unsupported value: "SCTP"'),
    Case("several-ports-unnamed", proxyservice,
         _set("spec.ports", [{"port": 80}, {"port": 81}]),
         "every port needs a name when there are several"),
    Case("duplicate-service-port-names", proxyservice,
         _set("spec.ports", [{"name": "web", "port": 80}, {"name": "web", "port": 81}]),
         "port names must be unique"),
    Case("duplicate-port-and-protocol", proxyservice,
         _set("spec.ports", [{"name": "a", "port": 80}, {"name": "b", "port": 80}]),
         "Duplicate value"),
    Case("target-port-invalid", proxyservice, _set("spec.ports.0.targetPort", "Not_A_Name"),
         "must be a port number between 1 and 65535 or the name of a container port"),
    Case("target-port-zero", proxyservice, _set("spec.ports.0.targetPort", 0),
         "must be a port number between 1 and 65535 or the name of a container port"),
    Case("ports-missing", proxyservice, lambda o: o["spec"].pop("ports"),
         "spec.ports: Required value"),
    Case("cluster-ip-not-an-ip", proxyservice, _set("spec.clusterIP", "banana"),
         "clusterIP must be an IPv4 address"),
    Case("cluster-ip-changed", proxyservice, _set("spec.clusterIP", "10.96.200.11"),
         "clusterIP is immutable once set", update=True),
    Case("cluster-ip-removed", proxyservice, lambda o: o["spec"].pop("clusterIP"),
         "clusterIP is immutable once set", update=True),
    Case("affinity-config-without-client-ip", proxyservice,
         _set("spec.sessionAffinityConfig", {"clientIP": {"timeoutSeconds": 60}}),
         "sessionAffinityConfig may only be set with sessionAffinity ClientIP"),
    Case("affinity-timeout-too-long", proxyservice,
         lambda o: o["spec"].update(sessionAffinity="ClientIP",
                                    sessionAffinityConfig={"clientIP": {"timeoutSeconds": 90000}}),
         "should be less than or equal to 86400"),
    # --- NodeAgent
    Case("instance-cidr-with-host-bits", nodeagent, _set("spec.instanceCIDR", "10.250.7.1/24"),
         "instanceCIDR must be an IPv4 CIDR without host bits"),
    Case("instance-cidr-not-a-cidr", nodeagent, _set("spec.instanceCIDR", "10.250.7.0"),
         "instanceCIDR must be an IPv4 CIDR without host bits"),
    Case("instance-cidr-changed", nodeagent, _set("spec.instanceCIDR", "10.250.8.0/24"),
         "instanceCIDR is immutable once set", update=True),
    Case("unschedulable-not-a-boolean", nodeagent, _set("spec.unschedulable", "maybe"),
         "must be of type boolean"),
]
# fmt: on


def test_the_table_covers_every_kind_with_at_least_30_cases() -> None:
    assert len(CASES) >= 30
    assert {c.base for c in CASES} == {workload, instance, proxyservice, nodeagent}
    assert len({c.id for c in CASES}) == len(CASES)


def _apply(cluster: TestCluster, obj: Obj, namespace: str) -> tuple[int, str]:
    ns = [] if obj["kind"] == "NodeAgent" else ["-n", namespace]
    proc = cluster.kubectl("apply", *ns, "-f", "-", input=yaml.safe_dump(obj), check=False)
    return proc.returncode, proc.stderr + proc.stdout


def _get(cluster: TestCluster, obj: Obj, namespace: str) -> Obj | None:
    ns = [] if obj["kind"] == "NodeAgent" else ["-n", namespace]
    kind = f"{obj['kind'].lower()}s.kopflet.dev"
    proc = cluster.kubectl("get", kind, obj["metadata"]["name"], *ns, "-o", "yaml", check=False)
    if proc.returncode != 0:
        assert "NotFound" in proc.stderr, proc.stderr
        return None
    stored: Obj = yaml.safe_load(proc.stdout)
    return stored


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_invalid_object_is_refused_with_its_reason(
    cluster: TestCluster, namespace: str, case: Case
) -> None:
    name = f"bad-{uuid.uuid4().hex[:8]}"
    base = case.base(name)
    changed = copy.deepcopy(base)
    case.change(changed)
    try:
        if case.update:
            rc, out = _apply(cluster, base, namespace)
            assert rc == 0, f"the valid base object was refused:\n{out}"
            before = _get(cluster, base, namespace)
            assert before is not None
        rc, out = _apply(cluster, changed, namespace)
        assert rc != 0, f"accepted:\n{yaml.safe_dump(changed)}"
        assert case.fragment in out
        stored = _get(cluster, changed, namespace)
        if case.update:
            # The refused update left the object as it was.
            assert stored is not None and before is not None
            assert stored["spec"] == before["spec"]
        else:
            assert stored is None
    finally:
        if base["kind"] == "NodeAgent":
            cluster.kubectl(
                "delete", "nodeagents.kopflet.dev", name, "--ignore-not-found", check=False
            )
