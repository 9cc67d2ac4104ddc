"""``kopflet logs``: which container of which node's engine it reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from kopflet.agent.logs_command import (
    LogsError,
    agent_docker_host,
    build_parser,
    choose_container_id,
    in_pod_argv,
    local_cluster_of,
    local_docker_host,
    target_of,
)
from kopflet.agent.runtime.labels import RESTART_COUNT_LABEL

pytestmark = pytest.mark.unit


def instance(*containers: str, node: str | None = "node-2") -> dict[str, object]:
    spec: dict[str, object] = {"containers": [{"name": c, "image": "i"} for c in containers]}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": "web", "uid": "u1"}, "spec": spec}


def test_the_only_container_needs_no_name() -> None:
    target = target_of(instance("server"), None)
    assert (target.node, target.uid, target.container) == ("node-2", "u1", "server")


def test_several_containers_need_a_name_and_a_wrong_one_is_refused() -> None:
    with pytest.raises(LogsError, match="choose one of: server, sidecar"):
        target_of(instance("server", "sidecar"), None)
    with pytest.raises(LogsError, match="not valid"):
        target_of(instance("server", "sidecar"), "db")
    assert target_of(instance("server", "sidecar"), "sidecar").container == "sidecar"


def test_an_unbound_instance_has_no_logs_yet() -> None:
    with pytest.raises(LogsError, match="not bound"):
        target_of(instance("server", node=None), None)


def entry(cid: str, restarts: int, created: int) -> dict[str, object]:
    return {"Id": cid, "Created": created, "Labels": {RESTART_COUNT_LABEL: str(restarts)}}


def test_the_latest_attempt_is_read_and_previous_reads_the_one_before() -> None:
    entries = [entry("first", 0, 100), entry("third", 2, 300), entry("second", 1, 200)]
    assert choose_container_id(entries, previous=False) == "third"
    assert choose_container_id(entries, previous=True) == "second"
    with pytest.raises(LogsError, match="previous"):
        choose_container_id([entry("only", 0, 1)], previous=True)
    with pytest.raises(LogsError):
        choose_container_id([], previous=False)


def test_local_cluster_is_recognised_by_its_api_server(tmp_path: Path) -> None:
    state, run = tmp_path / "state", tmp_path / "run"
    for name, port in (("kopflet", 6443), ("kopflet-test", 6444)):
        (state / name).mkdir(parents=True)
        (state / name / "admin.kubeconfig").write_text(
            f"clusters:\n- name: {name}\n  cluster:\n    server: https://172.30.0.1:{port}\n"
        )
        (run / name / "node-2").mkdir(parents=True)
    (run / "kopflet-test" / "node-2" / "docker.sock").touch()
    found = local_cluster_of("https://172.30.0.1:6444", state_root=state, run_root=run)
    assert found == "kopflet-test"
    assert local_cluster_of("https://10.0.0.1:6443", state_root=state, run_root=run) is None
    assert local_docker_host("node-2", cluster="kopflet-test", run_root=run) == (
        f"unix://{run}/kopflet-test/node-2/docker.sock"
    )
    assert local_docker_host("node-2", cluster="kopflet", run_root=run) is None  # no socket
    assert local_docker_host("kind-worker", cluster="kopflet-test", run_root=run) is None


def test_on_kind_the_agent_pod_reads_the_engine_its_agent_container_was_given() -> None:
    pod = {
        "spec": {
            "containers": [
                {"name": "engine", "args": ["--docker-host=unix:///wrong.sock"]},
                {
                    "name": "agent",
                    "args": ["kopflet", "agent", "--docker-host=unix:///run/kopflet/docker.sock"],
                },
            ]
        }
    }
    assert agent_docker_host(pod) == "unix:///run/kopflet/docker.sock"
    assert agent_docker_host({"spec": {"containers": [{"name": "agent"}]}}) == (
        "unix:///var/run/docker.sock"
    )
    args = build_parser().parse_args(["web", "-f", "--tail", "5", "--kubeconfig", "/mine"])
    target = target_of(instance("server"), None)
    assert in_pod_argv(args, target, "ns", "unix:///run/kopflet/docker.sock") == [
        "web",
        "-n",
        "ns",
        "-c",
        "server",
        "--docker-host",
        "unix:///run/kopflet/docker.sock",
        "-f",
        "--tail",
        "5",
    ]
