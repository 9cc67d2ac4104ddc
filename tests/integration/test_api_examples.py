"""The examples are accepted as written; kubectl works on our kinds as on core ones:
``get kopflet`` with printer columns, ``scale``, ``explain``, server-side defaults and
a field selector on ``spec.nodeName``."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import TestCluster

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_FILES = sorted(p.name for p in EXAMPLES.glob("*.yaml"))


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


def _contains(stored: Any, wanted: Any, path: str = "") -> None:
    """Everything the example says is stored as said (defaults may add more)."""
    if isinstance(wanted, dict):
        assert isinstance(stored, dict), path
        for key, value in wanted.items():
            assert key in stored, f"{path}.{key} was dropped"
            _contains(stored[key], value, f"{path}.{key}")
    elif isinstance(wanted, list):
        assert isinstance(stored, list) and len(stored) == len(wanted), path
        for i, (s, w) in enumerate(zip(stored, wanted, strict=True)):
            _contains(s, w, f"{path}[{i}]")
    else:
        assert stored == wanted, f"{path}: {stored!r} != {wanted!r}"


def _get_json(cluster: TestCluster, namespace: str, *args: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(
        cluster.kubectl("get", "-n", namespace, *args, "-o", "json").stdout
    )
    return out


@pytest.mark.parametrize("example", EXAMPLE_FILES)
def test_example_is_accepted_and_stored_as_written(
    cluster: TestCluster, namespace: str, example: str
) -> None:
    out = cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / example)).stdout
    for doc in _docs(example):
        name = doc["metadata"]["name"]
        assert f"/{name} created" in out
        if doc["apiVersion"].startswith("kopflet.dev/"):
            stored = _get_json(cluster, namespace, f"{doc['kind'].lower()}s.kopflet.dev", name)
            _contains(stored["spec"], doc["spec"], "spec")
            _contains(stored["metadata"].get("labels", {}), doc["metadata"].get("labels", {}))


def test_kubectl_get_kopflet_lists_every_kind_with_its_columns(
    cluster: TestCluster, namespace: str
) -> None:
    for example in ("web-server.yaml", "crashing-container.yaml"):
        cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / example))
    node = f"t-{uuid.uuid4().hex[:8]}"
    agent = {
        "apiVersion": "kopflet.dev/v1alpha1",
        "kind": "NodeAgent",
        "metadata": {"name": node},
        "spec": {"instanceCIDR": "10.251.3.0/24", "unschedulable": True},
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(agent))
    try:
        listed = cluster.kubectl("get", "kopflet", "-n", namespace).stdout
        # One table per kind, each with its own header, as for `kubectl get all`.
        tables = [t.splitlines() for t in listed.split("\n\n") if t.strip()]
        headers = {t[1].split("/")[0]: t[0].split() for t in tables}
        assert headers == {
            "workload.kopflet.dev": ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
            "instance.kopflet.dev": ["NAME", "NODE", "STATUS", "RESTARTS", "IP", "AGE"],
            "proxyservice.kopflet.dev": ["NAME", "TYPE", "CLUSTER-IP", "PORTS", "ENDPOINTS", "AGE"],
            "nodeagent.kopflet.dev": ["NAME", "STATUS", "SUBNET", "INSTANCES", "VERSION", "AGE"],
        }, listed
        assert "workload.kopflet.dev/web" in listed
        assert "instance.kopflet.dev/crasher" in listed
        psvc = [line for line in listed.splitlines() if "proxyservice.kopflet.dev/web" in line]
        assert psvc and psvc[0].split()[1] == "NodePort"

        nodes = cluster.kubectl("get", "nodeagents.kopflet.dev", node).stdout.splitlines()
        assert nodes[0].split() == ["NAME", "STATUS", "SUBNET", "INSTANCES", "VERSION", "AGE"]
        assert "10.251.3.0/24" in nodes[1].split()
        cluster_wide = cluster.kubectl("get", "kopflet", "-A").stdout
        assert f"nodeagent.kopflet.dev/{node}" in cluster_wide
    finally:
        cluster.kubectl("delete", "nodeagents.kopflet.dev", node, "--ignore-not-found")


def test_short_names_resolve(cluster: TestCluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "web-server.yaml"))
    assert "web" in cluster.kubectl("get", "wl", "-n", namespace, "-o", "name").stdout
    assert "web" in cluster.kubectl("get", "psvc", "-n", namespace, "-o", "name").stdout
    cluster.kubectl("get", "inst", "-n", namespace)
    cluster.kubectl("get", "na")


def test_kubectl_scale_changes_replicas_through_the_scale_subresource(
    cluster: TestCluster, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "web-server.yaml"))
    # The controller writes status.selector; set it here too so the test does not
    # depend on it (both write the same string).
    cluster.kubectl(
        "patch",
        "-n",
        namespace,
        "workloads.kopflet.dev",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"selector": "app=web"}}),
    )
    cluster.kubectl("scale", "-n", namespace, "workload/web", "--replicas=3")
    stored = _get_json(cluster, namespace, "workloads.kopflet.dev", "web")
    assert stored["spec"]["replicas"] == 3
    scale = json.loads(
        cluster.kubectl(
            "get",
            "--raw",
            f"/apis/kopflet.dev/v1alpha1/namespaces/{namespace}/workloads/web/scale",
        ).stdout
    )
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 3
    assert scale["status"]["selector"] == "app=web"
    cluster.kubectl("scale", "-n", namespace, "wl/web", "--replicas=0")
    assert _get_json(cluster, namespace, "wl", "web")["spec"]["replicas"] == 0


@pytest.mark.parametrize(
    ("field", "fragment"),
    [
        ("workloads", "runs replicas of an Instance template"),
        ("workloads.spec.strategy.rollingUpdate.maxSurge", "rounded up"),
        (
            "workloads.spec.template.spec.containers.livenessProbe",
            "Restarts the container when it fails",
        ),
        ("instances.spec.containers.imagePullPolicy", "the core rule applies"),
        ("instances.status.reason", "STATUS column"),
        ("proxyservices.spec.ports.targetPort", "the name of a container port"),
        ("nodeagents.spec.instanceCIDR", "instance subnet"),
    ],
)
def test_kubectl_explain_reads_the_descriptions(
    cluster: TestCluster, field: str, fragment: str
) -> None:
    out = cluster.kubectl("explain", field).stdout
    assert fragment in " ".join(out.split())


def test_api_server_applies_the_core_defaults(cluster: TestCluster, namespace: str) -> None:
    minimal = {
        "apiVersion": "kopflet.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": "minimal"},
        "spec": {
            "selector": {"matchLabels": {"app": "m"}},
            "template": {
                "metadata": {"labels": {"app": "m"}},
                "spec": {
                    "nodeSelector": {"kopflet.dev/none": "true"},
                    "containers": [
                        {
                            "name": "main",
                            "image": "kopflet/busybox:latest",
                            "ports": [{"containerPort": 80}],
                            "livenessProbe": {"tcpSocket": {"port": 80}},
                        }
                    ],
                },
            },
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(minimal))
    spec = _get_json(cluster, namespace, "workloads.kopflet.dev", "minimal")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
    }
    assert (spec["minReadySeconds"], spec["progressDeadlineSeconds"]) == (0, 600)
    template = spec["template"]["spec"]
    assert template["restartPolicy"] == "Always"
    assert template["terminationGracePeriodSeconds"] == 30
    container = template["containers"][0]
    assert container["ports"] == [{"containerPort": 80, "protocol": "TCP"}]
    assert container["livenessProbe"] == {
        "tcpSocket": {"port": 80},
        "initialDelaySeconds": 0,
        "timeoutSeconds": 1,
        "periodSeconds": 10,
        "successThreshold": 1,
        "failureThreshold": 3,
    }
    # No static default can express the core rule: it is resolved where it is used.
    assert "imagePullPolicy" not in container

    service = {
        "apiVersion": "kopflet.dev/v1alpha1",
        "kind": "ProxyService",
        "metadata": {"name": "minimal"},
        "spec": {"selector": {"app": "m"}, "ports": [{"port": 80}]},
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(service))
    svc = _get_json(cluster, namespace, "proxyservices.kopflet.dev", "minimal")["spec"]
    assert (svc["type"], svc["sessionAffinity"]) == ("ClusterIP", "None")
    assert svc["ports"][0]["protocol"] == "TCP"


def test_instances_can_be_listed_per_node_with_a_field_selector(
    cluster: TestCluster, namespace: str
) -> None:
    suffix = uuid.uuid4().hex[:6]
    nodes = {"a": f"t-node-a-{suffix}", "b": f"t-node-b-{suffix}"}
    for i, node in enumerate(["a", "a", "b"]):
        inst = {
            "apiVersion": "kopflet.dev/v1alpha1",
            "kind": "Instance",
            "metadata": {"name": f"i{i}"},
            "spec": {
                "nodeName": nodes[node],
                "containers": [{"name": "main", "image": "kopflet/busybox:local"}],
            },
        }
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(inst))
    on_a = cluster.kubectl(
        "get",
        "-n",
        namespace,
        "instances.kopflet.dev",
        "-o",
        "name",
        f"--field-selector=spec.nodeName={nodes['a']}",
    ).stdout.split()
    assert sorted(on_a) == ["instance.kopflet.dev/i0", "instance.kopflet.dev/i1"]
    across = cluster.kubectl(
        "get",
        "-A",
        "instances.kopflet.dev",
        "-o",
        "name",
        f"--field-selector=spec.nodeName={nodes['b']}",
    ).stdout.split()
    assert across == ["instance.kopflet.dev/i2"]


def test_valid_updates_are_accepted(cluster: TestCluster, namespace: str) -> None:
    unbound = {
        "apiVersion": "kopflet.dev/v1alpha1",
        "kind": "Instance",
        "metadata": {"name": "late"},
        "spec": {
            "nodeSelector": {"kopflet.dev/none": "true"},
            "containers": [{"name": "main", "image": "kopflet/busybox:local"}],
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(unbound))
    # Binding an unbound Instance is what the scheduler does: allowed once.
    cluster.kubectl(
        "patch",
        "-n",
        namespace,
        "inst",
        "late",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"nodeName": "no-such-node"}}),
    )
    service = {
        "apiVersion": "kopflet.dev/v1alpha1",
        "kind": "ProxyService",
        "metadata": {"name": "late"},
        "spec": {"selector": {"app": "m"}, "ports": [{"port": 80}]},
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(service))
    # Allocating a clusterIP for a service without one is what the controller does.
    # (The controller may have done it already; then the same value is a no-op. The patch is
    # conditional on what was read: the controller may also allocate in between.)
    for _ in range(5):
        read = _get_json(cluster, namespace, "psvc", "late")
        current = read["spec"].get("clusterIP")
        patch = {
            "metadata": {"resourceVersion": read["metadata"]["resourceVersion"]},
            "spec": {"clusterIP": current or "10.96.201.7"},
        }
        done = cluster.kubectl(
            "patch", "-n", namespace, "psvc", "late", "--type=merge", "-p", json.dumps(patch),
            check=False,
        )  # fmt: skip
        if done.returncode == 0:
            break
        assert "the object has been modified" in done.stderr, done.stderr
    else:
        raise AssertionError("the ProxyService kept changing under the patch")
    stored = _get_json(cluster, namespace, "psvc", "late")
    assert stored["spec"]["clusterIP"] == (current or "10.96.201.7")
