"""``kubectl apply -k manifests/`` on a real API server: what it renders, that the server accepts
every object and the Pods of the Deployment and DaemonSet, that the roles are the very ones the
test cluster runs its controller and agents with, and that they grant no more than needed."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import TestCluster
from kopflet.agent.options import parse_options as parse_agent_options
from kopflet.controller.options import parse_options as parse_controller_options
from kopflet.local.bootstrap import crd_files

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
SYSTEM = "kopflet-system"
AGENT = f"system:serviceaccount:{SYSTEM}:kopflet-agent"
CONTROLLER = f"system:serviceaccount:{SYSTEM}:kopflet-controller"


def _render(cluster: TestCluster, directory: Path) -> list[dict[str, Any]]:
    out = cluster.kubectl("kustomize", str(directory)).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _key(doc: dict[str, Any]) -> tuple[str, str, str]:
    return (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])


@pytest.fixture(scope="module")
def rendered(cluster: TestCluster) -> list[dict[str, Any]]:
    return _render(cluster, MANIFESTS)


def _one(rendered: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in rendered if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def _container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def test_kustomization_renders_crds_rbac_policies_and_both_workloads(
    rendered: list[dict[str, Any]],
) -> None:
    kinds = sorted({d["kind"] for d in rendered})
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "DaemonSet",
        "Deployment",
        "Namespace",
        "Role",
        "RoleBinding",
        "ServiceAccount",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    assert {d["metadata"]["name"] for d in rendered if d["kind"] == "Namespace"} == {
        SYSTEM,
        "kopflet-node-lease",
    }
    deployment = _one(rendered, "Deployment", "kopflet-controller")
    daemonset = _one(rendered, "DaemonSet", "kopflet-agent")
    assert deployment["metadata"]["namespace"] == daemonset["metadata"]["namespace"] == SYSTEM


def test_every_generated_crd_is_in_the_kustomization(
    cluster: TestCluster, rendered: list[dict[str, Any]]
) -> None:
    on_disk = {name for _, name in crd_files(ROOT / "crds")}
    assert len(on_disk) == 4
    assert {d["metadata"]["name"] for d in _render(cluster, ROOT / "crds")} == on_disk
    assert {d["metadata"]["name"] for d in rendered if d["kind"] == "CustomResourceDefinition"} == (
        on_disk
    )


def test_rbac_and_policies_are_the_files_the_local_cluster_applies(
    cluster: TestCluster, rendered: list[dict[str, Any]]
) -> None:
    """The local cluster applies manifests/rbac and manifests/policies as they are; the full
    install must render those same objects (only the namespace gains a label)."""
    own = {_key(d): d for d in rendered}
    for part in ("rbac", "policies"):
        for doc in _render(cluster, MANIFESTS / part):
            assert _key(doc) in own, f"{part}: {_key(doc)} missing from manifests/"
            if doc["kind"] != "Namespace":
                assert own[_key(doc)] == doc, f"{_key(doc)} differs from manifests/{part}"


def test_roles_in_the_test_cluster_are_the_rendered_ones(
    cluster: TestCluster, rendered: list[dict[str, Any]]
) -> None:
    """The controller and agents of the integration suite run with these roles, so every
    integration test exercises exactly the RBAC that a cluster install gets."""
    for doc in rendered:
        if doc["kind"] not in ("ClusterRole", "Role"):
            continue
        where = ["-n", doc["metadata"]["namespace"]] if doc["kind"] == "Role" else []
        live = json.loads(
            cluster.kubectl(
                "get", doc["kind"].lower(), doc["metadata"]["name"], *where, "-o", "json"
            ).stdout
        )
        assert live["rules"] == doc["rules"], f"{doc['kind']}/{doc['metadata']['name']}"


def test_server_side_dry_run_accepts_every_object(cluster: TestCluster) -> None:
    out = cluster.kubectl("apply", "-k", str(MANIFESTS), "--dry-run=server", timeout=120).stdout
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) >= 20
    assert all(line.endswith("(server dry run)") for line in lines), out
    assert "deployment.apps/kopflet-controller" in out
    assert "daemonset.apps/kopflet-agent" in out


def _pod_of(workload: dict[str, Any], namespace: str) -> dict[str, Any]:
    template = workload["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{workload['metadata']['name']}-dry-run",
            "namespace": namespace,
            "labels": template["metadata"]["labels"],
        },
        "spec": template["spec"],
    }


def test_pods_of_both_workloads_pass_pod_admission(
    cluster: TestCluster, rendered: list[dict[str, Any]]
) -> None:
    """A Deployment is accepted before any Pod exists; a Pod meets the ServiceAccount,
    priority class and Pod Security admission checks."""
    for kind, name in (("Deployment", "kopflet-controller"), ("DaemonSet", "kopflet-agent")):
        pod = _pod_of(_one(rendered, kind, name), SYSTEM)
        out = cluster.kubectl(
            "create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(pod)
        ).stdout
        created = json.loads(out)
        assert created["spec"]["priority"] >= 2_000_000_000, name
        assert created["spec"]["serviceAccountName"] == pod["spec"]["serviceAccountName"]


@pytest.fixture
def pod_security_namespace(cluster: TestCluster) -> Iterator[str]:
    name = f"t-psa-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    try:
        for account in ("kopflet-controller", "kopflet-agent"):
            cluster.kubectl("create", "serviceaccount", account, "-n", name)
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_controller_meets_restricted_pod_security_and_the_agent_needs_the_privileged_label(
    cluster: TestCluster, rendered: list[dict[str, Any]], pod_security_namespace: str
) -> None:
    ns = pod_security_namespace
    cluster.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    controller = _pod_of(_one(rendered, "Deployment", "kopflet-controller"), ns)
    cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(controller))

    cluster.kubectl(
        "label", "--overwrite", "namespace", ns, "pod-security.kubernetes.io/enforce=baseline"
    )
    agent = _pod_of(_one(rendered, "DaemonSet", "kopflet-agent"), ns)
    refused = cluster.kubectl(
        "create", "--dry-run=server", "-f", "-", input=json.dumps(agent), check=False
    )
    assert refused.returncode != 0
    assert "violates PodSecurity" in refused.stderr
    namespace = _one(rendered, "Namespace", SYSTEM)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_controller_runs_two_leader_elected_non_root_replicas_with_probes(
    rendered: list[dict[str, Any]],
) -> None:
    deployment = _one(rendered, "Deployment", "kopflet-controller")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment, "controller")
    assert deployment["spec"]["replicas"] == 2
    assert pod["serviceAccountName"] == "kopflet-controller"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert set(container["resources"]) == {"requests", "limits"}
    options = parse_controller_options(container["args"][2:])
    assert container["args"][:2] == ["kopflet", "controller"]
    assert options.leader_elect is True
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": options.health_port, "metrics": options.metrics_port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}


def test_agent_runs_on_every_node_beside_an_engine_sharing_only_its_socket(
    rendered: list[dict[str, Any]],
) -> None:
    daemonset = _one(rendered, "DaemonSet", "kopflet-agent")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["serviceAccountName"] == "kopflet-agent"
    assert {"operator": "Exists"} in pod["tolerations"]
    engine, agent = _container(daemonset, "engine"), _container(daemonset, "agent")

    # The agent's flags are the agent's own; its node comes from the downward API.
    assert agent["args"][:2] == ["kopflet", "agent"]
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    options = parse_agent_options([*agent["args"][2:], "--node-name", "n"])
    socket = options.docker_host.removeprefix("unix://")
    assert f"--host={options.docker_host}" in " ".join(engine["args"])

    mounts = {
        c["name"]: {m["name"]: m["mountPath"] for m in c["volumeMounts"]} for c in (engine, agent)
    }
    volumes = {v["name"]: v for v in pod["volumes"]}
    socket_volume = next(n for n, path in mounts["agent"].items() if socket.startswith(path + "/"))
    assert "emptyDir" in volumes[socket_volume]
    assert mounts["engine"][socket_volume] == mounts["agent"][socket_volume]
    # Instance volumes: written by the agent, bind-mounted by the engine, under one path.
    state = next(n for n, path in mounts["agent"].items() if path == str(options.state_dir))
    assert mounts["engine"][state] == str(options.state_dir)
    assert "hostPath" in volumes[state]
    engine_data = next(n for n, p in mounts["engine"].items() if p == "/var/lib/kopflet/docker")
    assert "hostPath" in volumes[engine_data] and engine_data not in mounts["agent"]

    # Privileges: the engine all of them, the agent network administration only.
    assert engine["securityContext"] == {"privileged": True}
    agent_security = agent["securityContext"]
    assert agent_security["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    assert agent_security["readOnlyRootFilesystem"] is True
    assert agent_security["allowPrivilegeEscalation"] is False
    assert "privileged" not in agent_security
    probes = {agent["livenessProbe"]["httpGet"]["port"], agent["readinessProbe"]["httpGet"]["port"]}
    assert probes == {"health"}
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
    assert ports == {"health": options.health_port, "metrics": options.metrics_port}
    # On a real node the kubelet and kube-proxy hold the agent's default ports.
    assert not {options.health_port, options.metrics_port} & {10248, 10249, 10250, 10256}


def _can(cluster: TestCluster, who: str, *args: str) -> bool:
    proc = cluster.kubectl("auth", "can-i", "--as", who, *args, check=False)
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), proc.stderr
    return answer == "yes"


AGENT_NEEDS = [
    ("watch", "instances.kopflet.dev", "--all-namespaces"),
    ("patch", "instances.kopflet.dev", "--subresource=status", "-n", "default"),
    ("list", "proxyservices.kopflet.dev", "--all-namespaces"),
    ("watch", "nodeagents.kopflet.dev"),
    ("patch", "nodeagents.kopflet.dev", "--subresource=status"),
    ("get", "configmaps", "-n", "default"),
    ("get", "secrets", "-n", "default"),
    ("update", "leases.coordination.k8s.io", "-n", "kopflet-node-lease"),
    ("create", "events", "-n", "default"),
]
AGENT_MUST_NOT = [
    ("create", "instances.kopflet.dev", "-n", "default"),
    ("delete", "instances.kopflet.dev", "-n", "default"),
    ("create", "workloads.kopflet.dev", "-n", "default"),
    ("patch", "proxyservices.kopflet.dev", "-n", "default"),
    ("delete", "nodeagents.kopflet.dev"),
    ("create", "secrets", "-n", "default"),
    ("create", "pods", "-n", "default"),
    ("update", "leases.coordination.k8s.io", "-n", SYSTEM),
    ("get", "nodes"),
    ("create", "clusterrolebindings"),
]
CONTROLLER_NEEDS = [
    ("create", "instances.kopflet.dev", "-n", "default"),
    ("patch", "workloads.kopflet.dev", "--subresource=status", "-n", "default"),
    ("patch", "nodeagents.kopflet.dev"),
    ("update", "leases.coordination.k8s.io", "-n", SYSTEM),
]
CONTROLLER_MUST_NOT = [
    ("get", "secrets", "-n", "default"),
    ("get", "configmaps", "-n", "default"),
    ("create", "workloads.kopflet.dev", "-n", "default"),
    ("delete", "nodeagents.kopflet.dev"),
    ("create", "pods", "-n", "default"),
    ("update", "leases.coordination.k8s.io", "-n", "kopflet-node-lease"),
    ("delete", "proxyservices.kopflet.dev", "-n", "default"),
    ("create", "clusterrolebindings"),
]


@pytest.mark.parametrize("request_args", AGENT_NEEDS, ids=" ".join)
def test_agent_may(cluster: TestCluster, request_args: tuple[str, ...]) -> None:
    assert _can(cluster, AGENT, *request_args)


@pytest.mark.parametrize("request_args", AGENT_MUST_NOT, ids=" ".join)
def test_agent_may_not(cluster: TestCluster, request_args: tuple[str, ...]) -> None:
    assert not _can(cluster, AGENT, *request_args)


@pytest.mark.parametrize("request_args", CONTROLLER_NEEDS, ids=" ".join)
def test_controller_may(cluster: TestCluster, request_args: tuple[str, ...]) -> None:
    assert _can(cluster, CONTROLLER, *request_args)


@pytest.mark.parametrize("request_args", CONTROLLER_MUST_NOT, ids=" ".join)
def test_controller_may_not(cluster: TestCluster, request_args: tuple[str, ...]) -> None:
    assert not _can(cluster, CONTROLLER, *request_args)
