"""The image, really built from the Dockerfile by ``scripts/build-image`` (on kopflet's own build
engine and a Debian base made here, no registry), and the agent's pod of the DaemonSet run from
it: the engine container and the agent container exactly as ``manifests/agent.yaml`` specifies
them, sharing the engine's socket, with a Pod-bound ServiceAccount token as the kubelet would
mount it. The agent registers its NodeAgent through the real API server."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

import kopflet
from conftest import TestCluster
from kopflet.local.bootstrap import service_account_token
from kopflet.local.build_engine import BuildEngine
from kopflet.local.mirror_proxy import mirror_proxy
from kopflet.local.node_identity import agent_token_for_node, identity_pod_name
from kopflet.local.nodes import unmount_below
from support import missing_infrastructure, wait_for

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "kopflet/kopflet:dev"
#: A node of its own, so that this agent fights no real agent of the test cluster.
NODE = "image-test-node"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

# A cold run debootstraps the base and installs the image's packages: minutes, once.
pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def built_image() -> str:
    if shutil.which("debootstrap") is None:
        missing_infrastructure("debootstrap is not installed (apt-get install debootstrap)")
    proc = subprocess.run(
        [str(ROOT / "scripts" / "build-image"), "--engine", "own"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert proc.returncode == 0, f"scripts/build-image failed:\n{proc.stderr[-3000:]}"
    assert f"Successfully tagged {IMAGE}" in proc.stdout, proc.stdout[-2000:]
    return IMAGE


@pytest.fixture(scope="module")
def engine(built_image: str) -> Iterator[docker.DockerClient]:
    with BuildEngine().running() as running:
        client = running.client()
        try:
            yield client
        finally:
            client.close()


def test_build_proxy_relays_the_debian_mirror_and_nothing_else() -> None:
    with mirror_proxy(host="127.0.0.1", port=0, allowed_hosts=frozenset({"deb.debian.org"})) as url:
        proxy = urllib.request.ProxyHandler({"http": url})
        opener = urllib.request.build_opener(proxy)
        release = "http://deb.debian.org/debian/dists/bookworm/Release"
        with opener.open(urllib.request.Request(release, method="HEAD"), timeout=30) as answer:
            assert answer.status == 200
        for refused in ("http://example.com/", "http://deb.debian.org:8080/debian/"):
            with pytest.raises(urllib.error.HTTPError) as error:
                opener.open(refused, timeout=30)
            assert error.value.code == 403
        # Only GET and HEAD, all that apt needs: no CONNECT tunnels, no uploads.
        with pytest.raises(urllib.error.HTTPError) as error:
            opener.open(urllib.request.Request(release, method="POST", data=b""), timeout=30)
        assert error.value.code == 501


def _run(client: docker.DockerClient, *command: str) -> str:
    out: bytes = client.containers.run(
        IMAGE, list(command), remove=True, network_mode="host", stderr=True
    )
    return out.decode()


def test_image_runs_kopflet_of_this_checkout(engine: docker.DockerClient) -> None:
    assert _run(engine, "kopflet", "--version").strip() == f"kopflet {kopflet.__version__}"


def test_image_holds_the_agents_tools_and_a_docker_engine(engine: docker.DockerClient) -> None:
    out = _run(
        engine,
        "sh",
        "-c",
        "iptables --version && nft --version && conntrack --version && ip -V && "
        "dockerd --version && docker --version && busybox --help | head -1 && python3 -V",
    )
    for expected in ("iptables v1.8", "nftables v1", "conntrack v1", "iproute2", "Docker version"):
        assert expected in out
    assert "BusyBox v" in out and "Python 3.11." in out


@pytest.fixture(scope="module")
def workloads(cluster: TestCluster) -> dict[str, dict[str, Any]]:
    """The rendered Deployment and DaemonSet, by kind."""
    out = cluster.kubectl("kustomize", str(ROOT / "manifests")).stdout
    return {
        d["kind"]: d
        for d in yaml.safe_load_all(out)
        if d and d["kind"] in ("Deployment", "DaemonSet")
    }


@pytest.mark.parametrize(
    ("kind", "container"), [("Deployment", "controller"), ("DaemonSet", "agent")]
)
def test_image_accepts_every_flag_the_manifests_pass(
    engine: docker.DockerClient, workloads: dict[str, dict[str, Any]], kind: str, container: str
) -> None:
    spec = next(
        c
        for c in workloads[kind]["spec"]["template"]["spec"]["containers"]
        if c["name"] == container
    )
    assert spec["image"] == IMAGE
    help_text = _run(engine, *spec["args"][:2], "--help")
    for arg in spec["args"][2:]:
        flag = arg.split("=", 1)[0]
        assert flag in help_text, f"`{' '.join(spec['args'][:2])}` does not know {flag}"


#: Capability names by bit, as far as the engine knows them (Docker 20.10 stops at AUDIT_READ).
CAPABILITIES = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
]


def privileged_arguments() -> dict[str, Any]:
    """``privileged: true`` where the host allows it. A host whose own bounding set lacks a
    capability (some sandboxes drop CAP_SYS_RESOURCE) cannot start a privileged container, so
    there the container gets what the engine in it needs of privileged: every capability the
    host holds, no seccomp or AppArmor profile, and the cgroup tree writable."""
    status = Path("/proc/self/status").read_text()
    bounding = int(
        next(ln for ln in status.splitlines() if ln.startswith("CapBnd:")).split()[1], 16
    )
    held = [name for bit, name in enumerate(CAPABILITIES) if bounding >> bit & 1]
    if len(held) == len(CAPABILITIES):
        return {"privileged": True}
    return {
        "cap_add": held,
        "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
        "volumes_extra": {"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
    }


# A pod's restartPolicy as the engine's restart policy of each of its containers.
RESTART_POLICIES = {"Always": "always", "OnFailure": "on-failure", "Never": "no"}


@dataclass
class PodEmulation:
    """What the kubelet would give the agent pod on a node: volumes (emptyDir and hostPath as
    directories of an emulated node), the ServiceAccount mount and the service env."""

    root: Path
    token: str
    ca_cert: Path
    api_host: str
    api_port: int

    def volume_path(self, volume: dict[str, Any]) -> Path:
        if "hostPath" in volume:
            path = self.root / "node" / volume["hostPath"]["path"].lstrip("/")
            if volume["hostPath"].get("type") == "FileOrCreate":
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            else:
                path.mkdir(parents=True, exist_ok=True)
            return path
        assert "emptyDir" in volume, f"unexpected volume {volume}"
        path = self.root / "pod" / volume["name"]
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)  # as the kubelet makes an emptyDir: any user of the pod may write
        return path

    def service_account(self) -> Path:
        directory = self.root / "serviceaccount"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "token").write_text(self.token)
        shutil.copy(self.ca_cert, directory / "ca.crt")
        (directory / "namespace").write_text("kopflet-system")
        return directory

    def run_arguments(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
        volumes = {v["name"]: v for v in pod["volumes"]}
        binds = {
            str(self.volume_path(volumes[m["name"]])): {"bind": m["mountPath"], "mode": "rw"}
            for m in container.get("volumeMounts", [])
        }
        binds[str(self.service_account())] = {"bind": SERVICE_ACCOUNT_DIR, "mode": "ro"}
        env = {
            "KUBERNETES_SERVICE_HOST": self.api_host,
            "KUBERNETES_SERVICE_PORT": str(self.api_port),
        }
        for entry in container.get("env", []):
            field = entry.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            env[entry["name"]] = NODE if field == "spec.nodeName" else entry["value"]
        pod_security = pod.get("securityContext", {})
        security = container.get("securityContext", {})
        capabilities = security.get("capabilities", {})
        user = security.get("runAsUser", pod_security.get("runAsUser"))
        group = security.get("runAsGroup", pod_security.get("runAsGroup"))
        arguments: dict[str, Any] = {
            "image": container["image"],
            "command": container["args"],
            "environment": env,
            "volumes": binds,
            # hostNetwork, or a pod network of its own: the build engine has none, and its own
            # namespace reaches the API server as a pod does.
            "network_mode": "host",
            "cap_add": capabilities.get("add"),
            "cap_drop": capabilities.get("drop"),
            "read_only": bool(security.get("readOnlyRootFilesystem")),
            "detach": True,
            "name": f"image-test-{container['name']}",
            # The kubelet starts a container of the pod again when it exits (a DaemonSet's and a
            # Deployment's pods are restartPolicy Always): an engine whose dockerd gave up
            # waiting for its containerd on a busy machine comes back as it would on a node.
            "restart_policy": {"Name": RESTART_POLICIES[pod.get("restartPolicy", "Always")]},
        }
        if security.get("privileged"):
            arguments.update(privileged_arguments())
        if security.get("allowPrivilegeEscalation") is False:
            arguments["security_opt"] = ["no-new-privileges"]
        if user is not None:
            arguments["user"] = f"{user}:{group}" if group is not None else str(user)
        arguments["volumes"].update(arguments.pop("volumes_extra", {}))
        return arguments


def _remove_container(client: docker.DockerClient, name: str) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        container = client.containers.get(name)
        # SIGTERM first: the engine container's dockerd stops its containers and unmounts.
        with contextlib.suppress(docker.errors.APIError):
            container.stop(timeout=30)
        container.remove(force=True)


def _forget_node(cluster: TestCluster) -> None:
    cluster.kubectl("delete", "nodeagent", NODE, "--ignore-not-found", "--wait=false")
    cluster.kubectl(
        "delete", "lease", NODE, "-n", "kopflet-node-lease", "--ignore-not-found", "--wait=false"
    )
    cluster.kubectl(
        "delete",
        "pod",
        identity_pod_name(NODE),
        "-n",
        "kopflet-system",
        "--ignore-not-found",
        "--grace-period=0",
        "--wait=false",
    )
    cluster.kubectl("delete", "node", NODE, "--ignore-not-found", "--wait=false")


@pytest.fixture
def agent_pod(
    cluster: TestCluster, engine: docker.DockerClient, workloads: dict[str, dict[str, Any]]
) -> Iterator[dict[str, docker.models.containers.Container]]:
    pod = workloads["DaemonSet"]["spec"]["template"]["spec"]
    root = BuildEngine().config.state_dir / "agent-pod"
    names = [f"image-test-{c['name']}" for c in pod["containers"]]
    for name in names:
        _remove_container(engine, name)
    unmount_below(root)
    shutil.rmtree(root, ignore_errors=True)
    _forget_node(cluster)
    # Cordoned before its agent starts: no test's Instance lands on this short-lived node.
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "kopflet.dev/v1alpha1",
                "kind": "NodeAgent",
                "metadata": {"name": NODE},
                "spec": {"unschedulable": True},
            }
        ),
    )
    api = cluster.api_client()
    try:
        token = agent_token_for_node(api, NODE, seconds=3600)
    finally:
        api.close()
    emulation = PodEmulation(
        root=root,
        token=token,
        ca_cert=cluster.config.pki_dir / "ca.crt",
        api_host=cluster.config.host_address,
        api_port=cluster.config.apiserver_port,
    )
    started: dict[str, docker.models.containers.Container] = {}
    try:
        for container in pod["containers"]:  # the engine first, as listed
            started[container["name"]] = engine.containers.run(
                **emulation.run_arguments(pod, container)
            )
        yield started
    finally:
        for name in reversed(names):
            _remove_container(engine, name)
        unmount_below(root)
        shutil.rmtree(root, ignore_errors=True)
        _forget_node(cluster)


def _logs(container: docker.models.containers.Container) -> str:
    with contextlib.suppress(docker.errors.DockerException):
        container.reload()
        restarts = container.attrs.get("RestartCount", 0)
        logs = container.logs(tail=40).decode(errors="replace")
        return f"({container.status}, restarted {restarts} times)\n{logs}"
    return "(no logs)"


def test_agent_pod_from_the_daemonset_registers_its_node_agent(
    cluster: TestCluster, agent_pod: dict[str, docker.models.containers.Container]
) -> None:
    def diagnose() -> str:
        parts = [f"--- {name}\n{_logs(c)}" for name, c in agent_pod.items()]
        parts.append(cluster.kubectl("get", "nodeagent", NODE, "-o", "yaml", check=False).stdout)
        return "\n".join(parts)

    def ready_status() -> dict[str, Any] | None:
        proc = cluster.kubectl("get", "nodeagent", NODE, "-o", "json", check=False)
        if proc.returncode != 0:
            return None
        status: dict[str, Any] = json.loads(proc.stdout).get("status") or {}
        ready = [c for c in status.get("conditions", []) if c["type"] == "Ready"]
        return status if ready and ready[0]["status"] == "True" else None

    status = wait_for(
        ready_status, timeout=120, message=f"NodeAgent {NODE} Ready", diagnose=diagnose
    )
    info = status["nodeInfo"]
    # The agent of this image, talking to the engine container of this image.
    assert info["agentVersion"] == kopflet.__version__
    assert info["osImage"].startswith("Debian GNU/Linux 12 (bookworm)")
    engine_version = agent_pod["engine"].exec_run(["dockerd", "--version"]).output.decode()
    assert info["engineVersion"] in engine_version
    lease = json.loads(
        cluster.kubectl("get", "lease", NODE, "-n", "kopflet-node-lease", "-o", "json").stdout
    )
    assert lease["spec"]["holderIdentity"] == NODE

    # What the kind quick start runs in every agent pod: the busybox image into its engine.
    socket = "unix:///run/kopflet/docker.sock"
    loaded = agent_pod["agent"].exec_run(
        ["kopflet", "load-image", "--busybox", "--into-engine", socket]
    )
    assert loaded.exit_code == 0, loaded.output.decode()
    images = agent_pod["agent"].exec_run(
        ["docker", "--host", socket, "images", "--format", "{{.Repository}}"]
    )
    assert "kopflet/busybox" in images.output.decode().split()


@pytest.fixture
def controller_pod(
    cluster: TestCluster, engine: docker.DockerClient, workloads: dict[str, dict[str, Any]]
) -> Iterator[docker.models.containers.Container]:
    pod = workloads["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    root = BuildEngine().config.state_dir / "controller-pod"
    name = f"image-test-{container['name']}"
    _remove_container(engine, name)
    shutil.rmtree(root, ignore_errors=True)
    api = cluster.api_client()
    try:
        token = service_account_token(api, "kopflet-controller")
    finally:
        api.close()
    emulation = PodEmulation(
        root=root,
        token=token,
        ca_cert=cluster.config.pki_dir / "ca.crt",
        api_host=cluster.config.host_address,
        api_port=cluster.config.apiserver_port,
    )
    started = engine.containers.run(**emulation.run_arguments(pod, container))
    try:
        yield started
    finally:
        _remove_container(engine, name)
        shutil.rmtree(root, ignore_errors=True)


def _probe(url: str) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()
    except OSError:
        return None


def test_controller_pod_from_the_deployment_waits_as_a_standby_and_answers_its_probes(
    cluster: TestCluster,
    controller_pod: docker.models.containers.Container,
    workloads: dict[str, dict[str, Any]],
) -> None:
    """A second replica beside the test cluster's leading controller: non-root, read-only root
    filesystem, no capabilities, in-cluster credentials of the kopflet-controller account."""
    (container,) = workloads["Deployment"]["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    address = BuildEngine().config.engine_address
    readyz = f"http://{address}:{ports['health']}{container['readinessProbe']['httpGet']['path']}"
    healthz = f"http://{address}:{ports['health']}{container['livenessProbe']['httpGet']['path']}"
    ready = wait_for(
        lambda: (answer := _probe(readyz)) and answer[0] == 200 and answer,
        timeout=60,
        message="the controller container's readiness probe",
        diagnose=lambda: _logs(controller_pod),
    )
    assert ready == (200, "ok (standby)")
    assert _probe(healthz) == (200, "ok")

    # It reads the leader Lease with its own credentials, and waits: the Lease is held.
    waiting = "waiting for kopflet-system/kopflet-controller"
    wait_for(
        lambda: waiting in _logs(controller_pod),
        timeout=30,
        message="the controller waits for the leader Lease",
        diagnose=lambda: _logs(controller_pod),
    )
    lease = json.loads(
        cluster.kubectl(
            "get", "lease", "kopflet-controller", "-n", "kopflet-system", "-o", "json"
        ).stdout
    )
    me = re.search(r"starting as (\S+?)[\\\s\"]", _logs(controller_pod))
    assert me is not None, _logs(controller_pod)
    assert lease["spec"]["holderIdentity"] != me.group(1)
    time.sleep(3 * 1.0)  # three retry periods of the elector
    complaints = [
        record["message"]
        for line in controller_pod.logs().decode(errors="replace").splitlines()
        if line.startswith("{")
        for record in [json.loads(line)["record"]]
        if record["level"]["name"] in ("WARNING", "ERROR", "CRITICAL")
    ]
    assert complaints == []

    uid = controller_pod.exec_run(["id", "-u"]).output.decode().strip()
    assert uid == str(
        workloads["Deployment"]["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    )
