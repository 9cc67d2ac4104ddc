"""What a fresh control plane gets before any component connects: the CRDs, the namespaces,
RBAC and admission policies from ``manifests/``, and ServiceAccount credentials for the
controller and the agents (each agent's bound to its node, see ``node_identity``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes
import yaml

from kopflet.api.constants import SYSTEM_NAMESPACE
from kopflet.local.binaries import Binaries
from kopflet.local.config import ClusterConfig
from kopflet.local.kubeconfigs import write_kubeconfig
from kopflet.local.node_identity import AGENT_SERVICE_ACCOUNT, agent_token_for_node
from kopflet.local.paths import project_dir
from kopflet.local.pki import Pki

CONTROLLER_SERVICE_ACCOUNT = "kopflet-controller"
#: A day: the supervisor writes fresh tokens whenever it starts the cluster.
TOKEN_SECONDS = 24 * 3600


class BootstrapError(RuntimeError):
    pass


def kubectl(
    binaries: Binaries, config: ClusterConfig, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(binaries.kubectl), f"--kubeconfig={config.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise BootstrapError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def apply_api_and_rbac(binaries: Binaries, config: ClusterConfig) -> None:
    root = project_dir()
    crds = crd_files(root / "crds")
    if crds:
        kubectl(
            binaries,
            config,
            "apply",
            "--server-side",
            *(arg for path, _ in crds for arg in ("-f", str(path))),
        )
        kubectl(
            binaries,
            config,
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            *(f"customresourcedefinition/{name}" for _, name in crds),
        )
    # Only the namespaces and RBAC: the local cluster runs the controller and the agents as
    # processes (there are no core Nodes for the Deployment and DaemonSet to land on), with
    # exactly the credentials those manifests grant.
    kubectl(binaries, config, "apply", "--server-side", "-k", str(root / "manifests" / "rbac"))
    # The node restriction of the agents' credentials (a ValidatingAdmissionPolicy).
    policies = root / "manifests" / "policies"
    if (policies / "kustomization.yaml").exists():
        kubectl(binaries, config, "apply", "--server-side", "-k", str(policies))


def crd_files(directory: Path) -> list[tuple[Path, str]]:
    """The CRD documents under ``directory`` with their names (a kustomization.yaml there is
    for kustomize, not for ``kubectl apply -f``)."""
    found = []
    for path in sorted(directory.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict) and document.get("kind") == "CustomResourceDefinition":
                found.append((path, str(document["metadata"]["name"])))
    return found


def service_account_token(api: kubernetes.client.ApiClient, name: str) -> str:
    core = kubernetes.client.CoreV1Api(api)
    request = kubernetes.client.AuthenticationV1TokenRequest(
        spec=kubernetes.client.V1TokenRequestSpec(audiences=[], expiration_seconds=TOKEN_SECONDS)
    )
    response = core.create_namespaced_service_account_token(name, SYSTEM_NAMESPACE, request)
    if response.status is None:
        raise BootstrapError(f"no token issued for ServiceAccount {name}")
    return str(response.status.token)


def admin_api_client(config: ClusterConfig) -> kubernetes.client.ApiClient:
    client: kubernetes.client.ApiClient = kubernetes.config.new_client_from_config(
        config_file=str(config.kubeconfig)
    )
    return client


def write_component_kubeconfigs(config: ClusterConfig, pki: Pki) -> dict[str, Path]:
    """Kubeconfigs holding ServiceAccount tokens: what a pod of that ServiceAccount would get."""
    api = admin_api_client(config)
    paths: dict[str, Path] = {}
    try:
        for account in (CONTROLLER_SERVICE_ACCOUNT, AGENT_SERVICE_ACCOUNT):
            paths[account] = write_kubeconfig(
                config.state_dir / f"{account}.kubeconfig",
                server=config.apiserver_url,
                ca_file=pki.ca_cert,
                cluster_name=config.name,
                user=f"system:serviceaccount:{SYSTEM_NAMESPACE}:{account}",
                token=service_account_token(api, account),
                namespace=SYSTEM_NAMESPACE,
            )
    finally:
        api.close()
    return paths


def agent_kubeconfig_path(config: ClusterConfig, node_name: str) -> Path:
    return config.state_dir / f"{AGENT_SERVICE_ACCOUNT}-{node_name}.kubeconfig"


def write_agent_kubeconfigs(
    config: ClusterConfig, pki: Pki, node_names: list[str]
) -> dict[str, Path]:
    """One kubeconfig per node, its token bound to that node: what the agent Pod of the
    DaemonSet on that node would get. The node-restriction policy refuses writes by agent
    credentials without a node (such as the unbound token of ``write_component_kubeconfigs``)."""
    api = admin_api_client(config)
    paths: dict[str, Path] = {}
    try:
        for node_name in node_names:
            paths[node_name] = write_kubeconfig(
                agent_kubeconfig_path(config, node_name),
                server=config.apiserver_url,
                ca_file=pki.ca_cert,
                cluster_name=config.name,
                user=f"system:serviceaccount:{SYSTEM_NAMESPACE}:{AGENT_SERVICE_ACCOUNT}",
                token=agent_token_for_node(api, node_name, seconds=TOKEN_SECONDS),
                namespace=SYSTEM_NAMESPACE,
            )
    finally:
        api.close()
    return paths
