"""The README's "Try it" commands, run as a user would type them, on the test cluster."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import yaml

from conftest import TestCluster

README = Path(__file__).parents[2] / "README.md"


def _try_it_commands() -> str:
    text = README.read_text()
    section = text.split("## Try it", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    assert match, "the README's Try it section has a sh block"
    return match.group(1)


def test_readme_try_it_runs_as_written(
    cluster: TestCluster, namespace: str, tmp_path: Path
) -> None:
    commands = _try_it_commands()
    # The README speaks of the default cluster (`make up`); the test cluster differs only in
    # its kubeconfig path and node addresses.
    commands = commands.replace(
        "/var/lib/kopflet/kopflet/admin.kubeconfig", str(tmp_path / "kubeconfig")
    )
    commands = commands.replace("172.30.0.11", cluster.nodes[0].address)
    kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
    kubeconfig["contexts"][0]["context"]["namespace"] = namespace
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    env = {**os.environ, "PATH": f"{cluster.binaries.kubectl.parent}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", commands],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "condition met" in result.stdout
    assert "kopflet\n" in result.stdout  # the page httpd serves, through the node port
    assert "workload.kopflet.dev/web scaled" in result.stdout
    replicas = cluster.kubectl(
        "-n", namespace, "get", "workload", "web", "-o", "jsonpath={.spec.replicas}"
    ).stdout
    assert replicas == "4"
