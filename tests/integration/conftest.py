"""One real local cluster for the whole test run — the same code as ``kopflet up``, under its own
name, ports and bridge so it lives beside a developer's cluster — and a namespace per test."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import kubernetes
import pytest

from kopflet.local import bootstrap, images
from kopflet.local import cluster as local_cluster
from kopflet.local.binaries import Binaries, BinariesError, ensure_binaries
from kopflet.local.config import ClusterConfig, NodeConfig
from support import missing_infrastructure

TEST_CLUSTER = ClusterConfig(
    name="kopflet-test",
    index=1,
    nodes=int(os.environ.get("KOPFLET_TEST_NODES", "3")),
)


@dataclass
class TestCluster:
    __test__ = False  # a fixture's value, not a test class

    config: ClusterConfig
    binaries: Binaries

    @property
    def kubeconfig(self) -> Path:
        return self.config.kubeconfig

    @property
    def nodes(self) -> list[NodeConfig]:
        return self.config.node_configs()

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.binaries.kubectl), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}"
            )
        return proc

    def api_client(self) -> kubernetes.client.ApiClient:
        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))

    def docker(self, node: NodeConfig) -> docker.DockerClient:
        return docker.DockerClient(base_url=node.docker_host, version="auto", timeout=60)

    def in_node(
        self, node: NodeConfig, *argv: str, timeout: float = 30, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in a node's network namespace (as the agent there runs)."""
        return subprocess.run(
            ["nsenter", f"--net={node.netns_path}", "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def log_tail(self, component_log: str, lines: int = 40) -> str:
        path = self.config.log_dir / component_log
        if not path.exists():
            return f"({path.name}: no log)"
        return f"--- {path.name}\n" + "\n".join(
            path.read_text(errors="replace").splitlines()[-lines:]
        )

    def diagnose(self, kind: str, name: str, namespace: str | None = None) -> str:
        """The object, its events and the controller's and agents' log tails."""
        ns = ["-n", namespace] if namespace else []
        parts = [
            self.kubectl("get", kind, name, *ns, "-o", "yaml", check=False).stdout,
            self.kubectl(
                "get", "events", *ns, "--field-selector", f"involvedObject.name={name}", check=False
            ).stdout,
            self.log_tail("controller.log"),
            *(self.log_tail(f"{n.name}-agent.log", 20) for n in self.nodes),
        ]
        return "\n".join(parts)


def _check_infrastructure() -> Binaries:
    if os.geteuid() != 0:
        missing_infrastructure("integration tests need root (network namespaces, dockerd)")
    for tool in ("dockerd", "nsenter", "ip", "iptables", "busybox"):
        if shutil.which(tool) is None:
            missing_infrastructure(f"{tool} is not installed (make deps)")
    try:
        return ensure_binaries()
    except BinariesError as error:
        missing_infrastructure(str(error))


@pytest.fixture(scope="session")
def cluster() -> Iterator[TestCluster]:
    binaries = _check_infrastructure()
    # A test cluster that already runs (KOPFLET_KEEP_TEST_CLUSTER=1 on an earlier run, or another
    # run in parallel) is reused and left running; it gets this checkout's CRDs, RBAC and images.
    reused = local_cluster.status(TEST_CLUSTER) is not None
    try:
        local_cluster.up(TEST_CLUSTER)
        if reused:
            bootstrap.apply_api_and_rbac(binaries, TEST_CLUSTER)
            images.load_images(
                [n.docker_host for n in TEST_CLUSTER.node_configs()], images.default_images()
            )
    except (local_cluster.UpFailed, bootstrap.BootstrapError) as error:
        pytest.fail(f"the test cluster did not come up: {error}", pytrace=False)
    yield TestCluster(config=TEST_CLUSTER, binaries=binaries)
    if not reused and os.environ.get("KOPFLET_KEEP_TEST_CLUSTER") != "1":
        local_cluster.down(TEST_CLUSTER)


@pytest.fixture
def namespace(cluster: TestCluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
