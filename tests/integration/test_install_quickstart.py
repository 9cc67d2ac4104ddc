"""The README's kind quick start: every command in it is either run by a test here or named as
one that needs a kind cluster; ``scripts/kind-up`` runs the very same steps; ``kind`` itself
accepts ``kind-config.yaml``, and the config publishes the web example's node port."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from kopflet.local.build_engine import BuildEngine
from kopflet.local.config import cache_dir
from support import missing_infrastructure

ROOT = Path(__file__).resolve().parents[2]
INTEGRATION = Path(__file__).resolve().parent
KIND_VERSION = "v0.29.0"

#: README command -> the test that runs it here ("file::name").
RUN_HERE = {
    "scripts/build-image": "test_install_image.py::built_image",
    "kubectl apply -k manifests/": (
        "test_install_manifests.py::test_server_side_dry_run_accepts_every_object"
    ),
    # The loop's body, run in the agent container of the DaemonSet's pod.
    "kopflet load-image --busybox --into-engine unix:///run/kopflet/docker.sock": (
        "test_install_image.py::test_agent_pod_from_the_daemonset_registers_its_node_agent"
    ),
    "kubectl apply -f examples/web-server.yaml": (
        "test_api_examples.py::test_example_is_accepted_and_stored_as_written"
    ),
    "kind create cluster --config kind-config.yaml": (
        "test_install_quickstart.py::test_kind_accepts_the_cluster_config"
    ),
}
#: Commands that need a running kind cluster (or make or delete one).
KIND_ONLY = {
    "scripts/kind-up",
    "scripts/kind-down",
    "kind load docker-image kopflet/kopflet:dev --name kopflet",
    "kubectl -n kopflet-system rollout status deployment/kopflet-controller --timeout=300s",
    "kubectl -n kopflet-system rollout status daemonset/kopflet-agent --timeout=300s",
    "kubectl -n kopflet-system get pods -l app.kubernetes.io/name=kopflet-agent -o name",
    "kubectl -n kopflet-system exec POD -c agent -- ...",
    "kubectl wait --for=condition=Available workload/web --timeout=300s",
    "kubectl get kopflet",
    "curl http://localhost:30080/",  # after scripts/kind-up, which waited for it to answer
    "curl --retry 5 --retry-connrefused --retry-delay 1 http://localhost:30080/",
}


def _quick_start_blocks() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Quick start on kind\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 2, "the quick start has the one-command block and the steps"
    return [block.strip().splitlines() for block in blocks]


def _commands(lines: list[str]) -> set[str]:
    """Each command of a block, its comment dropped; the agent-pod loop as its parts."""
    found: set[str] = set()
    for line in lines:
        command = re.sub(r"\s+#.*$", "", line).strip()
        if command in ("done", "") or command.startswith("#"):
            continue
        loop = re.fullmatch(r"for pod in \$\((.*)\); do", command)
        if loop:
            found.add(loop.group(1))
            continue
        exec_in_pod = re.fullmatch(r'(kubectl .* exec) "\$pod" (-c agent --) (.*)', command)
        if exec_in_pod:
            found.add("kubectl -n kopflet-system exec POD -c agent -- ...")
            found.add(exec_in_pod.group(3))
            continue
        found.add(command)
    return found


def test_every_quick_start_command_runs_here_or_needs_kind() -> None:
    commands = set().union(*(_commands(block) for block in _quick_start_blocks()))
    assert commands == set(RUN_HERE) | KIND_ONLY


@pytest.mark.parametrize("command", sorted(RUN_HERE))
def test_the_test_named_for_a_command_exists(command: str) -> None:
    file_name, test_name = RUN_HERE[command].split("::")
    source = (INTEGRATION / file_name).read_text()
    assert re.search(rf"^def {re.escape(test_name)}\(", source, flags=re.MULTILINE), (
        f"{RUN_HERE[command]} is gone: which test runs `{command}` now?"
    )


def test_kind_up_runs_the_readme_steps_word_for_word() -> None:
    steps = _quick_start_blocks()[1]
    script = (ROOT / "scripts" / "kind-up").read_text().splitlines()
    stripped = [line.strip() for line in script]
    # The README's `kind create cluster` becomes one that reuses an existing cluster; the rest
    # (its final curl aside, which the script retries) appears as written.
    for step in steps:
        if step.startswith(("kind create cluster", "curl ")):
            continue
        step = step.replace("--name kopflet", '--name "$name"')
        assert step.strip() in stripped, f"scripts/kind-up lacks: {step}"
    assert 'kind create cluster --name "$name" --config kind-config.yaml' in stripped
    assert any(line.startswith("if curl -fsS http://localhost:30080/") for line in stripped)
    for script_name in ("kind-up", "kind-down", "build-image"):
        syntax = subprocess.run(
            ["bash", "-n", str(ROOT / "scripts" / script_name)], capture_output=True, text=True
        )
        assert syntax.returncode == 0, syntax.stderr


def test_kind_config_has_three_nodes_and_publishes_the_web_examples_node_port() -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert config["name"] == "kopflet"  # what `kind load --name kopflet` names
    assert [n["role"] for n in config["nodes"]] == ["control-plane", "worker", "worker"]
    web = [d for d in yaml.safe_load_all((ROOT / "examples" / "web-server.yaml").read_text())]
    service = next(d for d in web if d["kind"] == "ProxyService")
    node_port = service["spec"]["ports"][0]["nodePort"]
    mappings = config["nodes"][0]["extraPortMappings"]
    assert {"containerPort": node_port, "hostPort": 30080} in [
        {"containerPort": m["containerPort"], "hostPort": m["hostPort"]} for m in mappings
    ]


def _kind() -> str:
    found = shutil.which("kind")
    if found:
        return found
    cached = cache_dir() / f"kind-{KIND_VERSION}" / "bin" / "kind"
    if cached.exists():
        return str(cached)
    go = shutil.which("go")
    if go is None:
        missing_infrastructure("neither kind nor go (to build kind) is installed")
    subprocess.run(
        [go, "install", f"sigs.k8s.io/kind@{KIND_VERSION}"],
        env={**os.environ, "GOBIN": str(cached.parent), "GOTOOLCHAIN": "local"},
        check=True,
        capture_output=True,
        timeout=600,
    )
    return str(cached)


@pytest.mark.timeout(900)
def test_kind_accepts_the_cluster_config() -> None:
    """kind loads and validates its config before anything else; "Ensuring node image" is its
    first step after that. There is no node image to pull here, so it stops right there."""
    kind = _kind()
    with BuildEngine().running() as engine:
        env = {**os.environ, "DOCKER_HOST": engine.config.docker_host}
        proc = subprocess.Popen(
            [kind, "create", "cluster", "--config", "kind-config.yaml"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert proc.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + 60
        try:
            for line in proc.stdout:
                seen.append(line.rstrip())
                if "Ensuring node image" in line or time.monotonic() > deadline:
                    break
        finally:
            # kind and the `docker pull` it started, which would only time out on DNS.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    output = "\n".join(seen)
    assert 'Creating cluster "kopflet"' in output, output
    assert "Ensuring node image" in output, output
