"""The runtime engine on a real dockerd: probes, env and volumes, images, security settings."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from docker.transport.unixconn import UnixHTTPConnection
from runtime_node import IMAGE, Agent, DockerNode, docker_node, instance, run_in_netns, until

from kopflet.agent.runtime.backoff import BackoffPolicy
from kopflet.agent.runtime.container_runtime import ImageInfo
from kopflet.agent.runtime.docker_runtime import DockerRuntime
from kopflet.api import find_condition

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def node() -> Iterator[DockerNode]:
    with docker_node() as found:
        yield found


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def test_liveness_failure_restarts_the_container(node: DockerNode, tmp_path: Path) -> None:
    # Healthy for about two seconds, then the liveness file disappears for good.
    script = "touch /tmp/alive; sleep 2; rm /tmp/alive; sleep 1000"
    probe = {"exec": {"command": ["cat", "/tmp/alive"]}, "periodSeconds": 1, "failureThreshold": 2}
    inst = instance(
        "sick",
        node="liveness",
        containers=[
            {"name": "main", "image": IMAGE, "command": sh(script), "livenessProbe": probe}
        ],
    )

    async def scenario() -> None:
        async with Agent(node, name="liveness", volumes_dir=tmp_path) as agent:
            agent.engine.set_desired([inst])
            await until(
                lambda: (
                    (s := agent.reporter.last("sick")) is not None and (s.restart_count or 0) >= 1
                ),
                seconds=30,
                message="restarted after its liveness probe failed",
            )
            reasons = agent.reporter.reasons("sick")
            assert "Unhealthy" in reasons and "Killing" in reasons
            unhealthy = [m for _, n, r, m in agent.reporter.events if r == "Unhealthy"]
            assert unhealthy[0].startswith("Liveness probe failed")

    run_in_netns(node.netns_path, scenario, timeout=60)


def test_readiness_gates_ready_and_startup_probe_gates_readiness(
    node: DockerNode, tmp_path: Path
) -> None:
    # httpd serves /www: /ready exists only while the test says so (through exec).
    serve = "mkdir -p /www && exec httpd -f -p 8080 -h /www"
    inst = instance(
        "web",
        node="readiness",
        containers=[
            {
                "name": "main",
                "image": IMAGE,
                "command": sh(serve),
                "ports": [{"name": "http", "containerPort": 8080}],
                "startupProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1},
                "readinessProbe": {
                    "httpGet": {"path": "/ready", "port": 8080},
                    "periodSeconds": 1,
                    "failureThreshold": 1,
                },
            }
        ],
    )

    def ready(agent: Agent) -> str | None:
        status = agent.reporter.last("web")
        condition = find_condition(status.conditions if status else None, "Ready")
        return condition.status if condition else None

    async def scenario() -> None:
        async with Agent(node, name="readiness", volumes_dir=tmp_path) as agent:
            agent.engine.set_desired([inst])
            await until(lambda: agent.phase("web") == "Running", seconds=30, message="running")
            await until(
                lambda: (
                    (s := agent.reporter.last("web")) is not None
                    and s.container_statuses is not None
                    and s.container_statuses[0].started is True
                ),
                seconds=15,
                message="started once the startup tcpSocket probe passed",
            )
            assert ready(agent) == "False"
            await agent.exec("uid-web", "main", "touch", "/www/ready")
            await until(lambda: ready(agent) == "True", seconds=15, message="ready")
            await agent.exec("uid-web", "main", "rm", "/www/ready")
            await until(lambda: ready(agent) == "False", seconds=15, message="unready again")
            status = agent.reporter.last("web")
            assert status is not None and status.container_statuses is not None
            assert status.container_statuses[0].ready is False
            assert status.restart_count == 0  # readiness never restarts anything

    run_in_netns(node.netns_path, scenario, timeout=90)


def test_env_comes_from_config_maps_secrets_and_the_downward_api(
    node: DockerNode, tmp_path: Path
) -> None:
    env = [
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "pw"}}},
        {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.instanceIP"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
    ]
    good = instance(
        "good",
        node="envnode",
        containers=[
            {
                "name": "main",
                "image": IMAGE,
                "command": ["sleep", "1000"],
                "env": env,
                "envFrom": [{"prefix": "CFG_", "configMapRef": {"name": "cfg"}}],
            }
        ],
    )
    missing = [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nope"}}}]
    bad = instance(
        "bad",
        node="envnode",
        containers=[{"name": "main", "image": IMAGE, "command": ["sleep", "1000"], "env": missing}],
    )

    async def scenario() -> None:
        async with Agent(node, name="envnode", volumes_dir=tmp_path) as agent:
            agent.objects.config_maps["default/cfg"] = {"mode": b"fast", "level": b"3"}
            agent.objects.secrets["default/creds"] = {"pw": b"s3cret"}
            agent.engine.set_desired([good, bad])
            await until(lambda: agent.phase("good") == "Running", seconds=30, message="good")
            printed = dict(
                line.split("=", 1)
                for line in (await agent.exec("uid-good", "main", "env")).splitlines()
                if "=" in line
            )
            status = agent.reporter.last("good")
            assert status is not None
            assert {k: printed.get(k) for k in ("MODE", "PASSWORD", "ME", "MY_IP", "NODE")} == {
                "MODE": "fast",
                "PASSWORD": "s3cret",
                "ME": "good",
                "MY_IP": status.instance_ip,
                "NODE": "envnode",
            }
            assert (printed.get("CFG_mode"), printed.get("CFG_level")) == ("fast", "3")
            await until(
                lambda: agent.reason("bad") == "CreateContainerConfigError",
                seconds=30,
                message="missing key reported",
            )
            status = agent.reporter.last("bad")
            assert status is not None and status.container_statuses is not None
            state = status.container_statuses[0].state
            assert state is not None and state.waiting is not None
            assert state.waiting.message == "couldn't find key nope in ConfigMap default/cfg"
            agent.objects.config_maps["default/cfg"] = {"mode": b"fast", "nope": b"here now"}
            agent.engine.wake_all()
            await until(lambda: agent.phase("bad") == "Running", seconds=30, message="bad fixed")

    run_in_netns(node.netns_path, scenario, timeout=90)


def test_config_map_and_secret_volumes_follow_their_objects(
    node: DockerNode, tmp_path: Path
) -> None:
    inst = instance(
        "files",
        node="volnode",
        volumes=[
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
            {"name": "scratch", "emptyDir": {}},
        ],
        containers=[
            {
                "name": "writer",
                "image": IMAGE,
                "command": sh("echo shared > /scratch/note; sleep 1000"),
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
            },
            {
                "name": "reader",
                "image": IMAGE,
                "command": ["sleep", "1000"],
                "volumeMounts": [
                    {"name": "cfg", "mountPath": "/etc/app"},
                    {"name": "creds", "mountPath": "/etc/creds"},
                    {"name": "scratch", "mountPath": "/scratch"},
                ],
            },
        ],
    )

    async def scenario() -> None:
        async with Agent(
            node, name="volnode", volumes_dir=tmp_path, resync_period_seconds=1
        ) as agent:
            agent.objects.config_maps["default/cfg"] = {"app.conf": b"version=1"}
            agent.objects.secrets["default/creds"] = {"token": b"t0ken"}
            agent.engine.set_desired([inst])
            await until(lambda: agent.phase("files") == "Running", seconds=30, message="running")
            read = agent.exec
            assert await read("uid-files", "reader", "cat", "/etc/app/app.conf") == "version=1"
            assert await read("uid-files", "reader", "cat", "/etc/creds/token") == "t0ken"
            mode = await read("uid-files", "reader", "stat", "-L", "-c", "%a", "/etc/creds/token")
            assert mode.strip() == "400"
            await until(
                lambda: read("uid-files", "reader", "cat", "/scratch/note"),
                seconds=10,
                message="emptyDir shared between the containers",
            )
            written = await read("uid-files", "reader", "sh", "-c", "echo x > /etc/app/y; echo $?")
            assert written.strip() != "0"  # configMap volumes are read-only
            agent.objects.config_maps["default/cfg"] = {"app.conf": b"version=2"}

            async def updated() -> bool:
                return await read("uid-files", "reader", "cat", "/etc/app/app.conf") == "version=2"

            await until(updated, seconds=15, message="running container sees the new content")
            status = agent.reporter.last("files")
            assert status is not None and status.restart_count == 0

    run_in_netns(node.netns_path, scenario, timeout=90)


def test_image_pull_failures_are_reported_not_fatal(node: DockerNode, tmp_path: Path) -> None:
    never = instance(
        "never",
        node="images",
        containers=[
            {"name": "main", "image": "kopflet/absent:1", "imagePullPolicy": "Never"},
        ],
    )
    # The node has no route anywhere: the registry is unreachable, the pull fails fast.
    unreachable = instance(
        "unreachable",
        node="images",
        containers=[{"name": "main", "image": "registry.invalid/nothing:1"}],
    )
    policy = BackoffPolicy(initial_seconds=2, max_seconds=8)

    async def scenario() -> None:
        async with Agent(node, name="images", volumes_dir=tmp_path, image_backoff=policy) as agent:
            agent.engine.set_desired([never, unreachable])
            await until(
                lambda: agent.reason("never") == "ErrImageNeverPull", seconds=30, message="never"
            )

            def seen(name: str) -> list[str | None]:
                return [s.reason for s in agent.reporter.statuses.get(name, [])]

            await until(
                lambda: "ImagePullBackOff" in seen("unreachable"), seconds=30, message="backoff"
            )
            assert "ErrImagePull" in seen("unreachable")
            status = agent.reporter.last("unreachable")
            assert status is not None and status.phase == "Pending"
            assert agent.engine.healthy()
            reasons = agent.reporter.reasons("unreachable")
            assert "Pulling" in reasons and "Failed" in reasons

    run_in_netns(node.netns_path, scenario, timeout=60)


def test_security_context_and_limits_reach_the_container(node: DockerNode, tmp_path: Path) -> None:
    inst = instance(
        "locked",
        node="secure",
        containers=[
            {
                "name": "main",
                "image": IMAGE,
                "command": ["sleep", "1000"],
                "resources": {"limits": {"cpu": "250m", "memory": "32Mi"}},
                "securityContext": {
                    "runAsUser": 65534,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
    )
    privileged = instance(
        "privileged",
        node="secure",
        containers=[
            {
                "name": "main",
                "image": IMAGE,
                "command": ["sleep", "1000"],
                "securityContext": {"privileged": True},
            }
        ],
    )

    async def scenario() -> None:
        async with Agent(node, name="secure", volumes_dir=tmp_path) as agent:
            agent.engine.set_desired([inst, privileged])
            await until(lambda: agent.phase("locked") == "Running", seconds=30, message="running")
            run = agent.exec
            assert (await run("uid-locked", "main", "id", "-u")).strip() == "65534"
            no_new = await run("uid-locked", "main", "grep", "NoNewPrivs", "/proc/self/status")
            assert no_new.split() == ["NoNewPrivs:", "1"]
            touch = await run("uid-locked", "main", "sh", "-c", "touch /x 2>&1; echo $?")
            assert touch.strip().endswith("1")
            [record] = await agent.running("uid-locked", "main")
            client = node.client()
            try:
                host = client.api.inspect_container(record.id)["HostConfig"]
            finally:
                client.close()
            assert (host["NanoCpus"], host["Memory"], host["CapDrop"]) == (
                250_000_000,
                32 * 1024 * 1024,
                ["ALL"],
            )
            await until(
                lambda: agent.reason("privileged") == "CreateContainerConfigError",
                seconds=30,
                message="privileged refused",
            )

    run_in_netns(node.netns_path, scenario, timeout=60)


def test_calls_about_many_objects_reuse_one_engine_connection(
    node: DockerNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK would open a connection per URL it has not seen lately (its pools are keyed
    by the whole URL): forty lookups of forty images, one after another, use one."""
    connects: list[object] = []
    connect = UnixHTTPConnection.connect

    def counted(self: UnixHTTPConnection) -> None:
        connects.append(self)
        connect(self)

    monkeypatch.setattr(UnixHTTPConnection, "connect", counted)
    runtime = DockerRuntime(base_url=node.docker_host, node="reuse")

    async def lookups() -> list[ImageInfo | None]:
        return [await runtime.image_info(f"kopflet/absent-{i}:1") for i in range(40)]

    try:
        assert asyncio.run(lookups()) == [None] * 40
    finally:
        runtime.close()
    # One for the version negotiation the client does first, one for the lookups.
    assert len(connects) <= 2
