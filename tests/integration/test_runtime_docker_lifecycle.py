"""The runtime engine on a real dockerd: sandbox networking, restarts, OOM, termination, orphans."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from runtime_node import IMAGE, Agent, DockerNode, docker_node, instance, run_in_netns, until

from kopflet.agent.runtime.backoff import BackoffPolicy
from kopflet.agent.runtime.container_runtime import NotOurs
from kopflet.agent.runtime.labels import ContainerID
from kopflet.agent.runtime.records import ContainerRecord, RunState
from kopflet.api import UID, Instance, Timestamp

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def node() -> Iterator[DockerNode]:
    with docker_node() as found:
        yield found


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def deleting(inst: Instance) -> Instance:
    """The Instance as the watch shows it once deleted, while the agent's finalizer holds it."""
    stamp = Timestamp("2026-01-01T00:00:00Z")
    return dataclasses.replace(
        inst, metadata=dataclasses.replace(inst.metadata, deletion_timestamp=stamp)
    )


def test_containers_share_the_instance_network_and_the_node_reaches_it(
    node: DockerNode, tmp_path: Path
) -> None:
    serve = (
        "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 8080 -h /www"
    )
    inst = instance(
        "web",
        node="share",
        containers=[
            {"name": "server", "image": IMAGE, "command": sh(serve)},
            {"name": "client", "image": IMAGE, "command": ["sleep", "1000"]},
        ],
    )

    async def scenario() -> None:
        async with Agent(node, name="share", volumes_dir=tmp_path) as agent:
            agent.engine.set_desired([inst])
            await until(lambda: agent.phase("web") == "Running", seconds=30, message="running")
            status = agent.reporter.last("web")
            assert status is not None and status.instance_ip and status.host_ip == "192.168.77.2"
            records = await agent.records("uid-web")
            [sandbox] = [r for r in records if r.is_sandbox]
            assert sandbox.ip == status.instance_ip
            assert {r.sandbox_id for r in records if not r.is_sandbox} == {sandbox.id}

            async def over_localhost() -> bool:
                request = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc 127.0.0.1 8080"
                return "hello-from-web" in await agent.exec("uid-web", "client", *sh(request))

            await until(over_localhost, seconds=10, message="client reaches server on localhost")
            reader, writer = await asyncio.open_connection(status.instance_ip, 8080)
            writer.write(b"GET / HTTP/1.0\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), timeout=5)
            writer.close()
            assert b"hello-from-web" in answer

    run_in_netns(node.netns_path, scenario, timeout=90)


async def running_ip(agent: Agent, inst: Instance) -> str:
    """Runs the one instance on the agent; its IP once it is Running."""
    name = inst.metadata.name or ""
    agent.engine.set_desired([inst])
    await until(lambda: agent.phase(name) == "Running", seconds=30, message=f"{name} running")
    status = agent.reporter.last(name)
    assert status is not None and status.instance_ip
    return status.instance_ip


async def http_get(host: str, port: int) -> str:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=5)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    return answer.decode(errors="replace")


def test_one_container_holds_the_instance_network_itself_and_keeps_its_ip(
    node: DockerNode, tmp_path: Path
) -> None:
    serve = (
        'mkdir -p /www && echo "$(hostname) $MY_IP" > /www/index.html '
        "&& exec httpd -f -p 8080 -h /www"
    )
    inst = instance(
        "solo",
        node="solo",
        hostname="solo-host",
        containers=[
            {
                "name": "main",
                "image": IMAGE,
                "command": sh(serve),
                "env": [
                    {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
                ],
                "ports": [{"containerPort": 8080, "hostPort": 18080}],
            }
        ],
    )

    async def scenario() -> None:
        async with Agent(node, name="solo", volumes_dir=tmp_path) as agent:
            ip = await running_ip(agent, inst)
            # One container on the engine, no sandbox: it holds the address the agent chose.
            [record] = await agent.records("uid-solo")
            assert not record.is_sandbox and record.sandbox_id is None
            assert record.ip == record.labels.instance_ip == ip
            # Its hostname, the address in its environment, through the IP and the host port.
            served = await until(
                lambda: _answer(ip, 8080), seconds=10, message="served on the instance IP"
            )
            assert served.split() == ["solo-host", ip]
            assert (await http_get("127.0.0.1", 18080)).split()[-2:] == ["solo-host", ip]

            await agent.runtime.stop_container(record.id, grace_seconds=0)

            async def restarted() -> bool:
                running = await agent.running("uid-solo", "main")
                return bool(running) and running[0].restart_count == 1

            await until(restarted, seconds=30, message="restarted")
            [again] = await agent.running("uid-solo", "main")
            assert again.ip == ip and again.labels.instance_ip == ip
            served = await until(
                lambda: _answer(ip, 8080), seconds=10, message="served again on the same IP"
            )
            assert served.split() == ["solo-host", ip]
            await until(
                lambda: (s := agent.reporter.last("solo")) is not None and s.restart_count == 1,
                seconds=10,
                message="restart reported",
            )
            last = agent.reporter.last("solo")
            assert last is not None and last.instance_ip == ip

    run_in_netns(node.netns_path, scenario, timeout=90)


def test_a_changed_hostname_replaces_the_container_on_the_same_ip(
    node: DockerNode, tmp_path: Path
) -> None:
    """Stop and start in one pass: the engine may still hold the old container's address
    when the new one asks for it; the address stays the instance's all the same."""
    serve = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"
    spec = {"containers": [{"name": "main", "image": IMAGE, "command": sh(serve)}]}
    first = instance("named", node="rename", hostname="before", **spec)
    second = instance("named", node="rename", hostname="after", **spec)

    async def scenario() -> None:
        async with Agent(node, name="rename", volumes_dir=tmp_path) as agent:
            ip = await running_ip(agent, first)
            assert await until(lambda: _answer(ip, 8080), seconds=10, message="up") == "before"
            agent.engine.put(second)
            served = await until(
                lambda: _renamed(ip),
                seconds=30,
                message="the new hostname served on the same IP",
            )
            assert served == "after"
            [record] = await agent.running("uid-named", "main")
            assert record.ip == record.labels.instance_ip == ip
            assert record.restart_count == 1

    run_in_netns(node.netns_path, scenario, timeout=90)


async def _renamed(ip: str) -> str:
    answer = await _answer(ip, 8080)
    return answer if answer == "after" else ""


async def _answer(host: str, port: int) -> str:
    try:
        answer = await http_get(host, port)
    except OSError:
        return ""
    return answer.split("\r\n\r\n", 1)[-1].strip()


def test_crashing_container_backs_off_1s_then_2s_then_4s(node: DockerNode, tmp_path: Path) -> None:
    inst = instance(
        "crash",
        node="backoff",
        containers=[{"name": "main", "image": IMAGE, "command": sh("echo dying; exit 3")}],
    )
    policy = BackoffPolicy(initial_seconds=1, max_seconds=4, reset_after_seconds=600)

    async def scenario() -> list[float]:
        async with Agent(node, name="backoff", volumes_dir=tmp_path, crash_backoff=policy) as agent:
            agent.engine.set_desired([inst])
            runs: dict[int, tuple[float, float | None]] = {}
            deadline = time.monotonic() + 40
            while len([r for r in runs.values() if r[1]]) < 5 and time.monotonic() < deadline:
                for record in await agent.records("uid-crash"):
                    if not record.is_sandbox and record.started_at:
                        runs[record.restart_count] = (record.started_at, record.finished_at)
                await asyncio.sleep(0.05)
            assert "CrashLoopBackOff" in [s.reason for s in agent.reporter.statuses["crash"]]
            status = agent.reporter.last("crash")
            assert status is not None and status.container_statuses is not None
            last = status.container_statuses[0].last_state
            assert last is not None and last.terminated is not None
            assert (last.terminated.exit_code, last.terminated.reason) == (3, "Error")
            assert last.terminated.message == "dying"
            assert "BackOff" in agent.reporter.reasons("crash")
            gaps = []
            for attempt in range(1, 5):
                finished = runs[attempt - 1][1]
                assert finished is not None
                gaps.append(runs[attempt][0] - finished)
            return gaps

    gaps = run_in_netns(node.netns_path, scenario, timeout=90)
    # The first crash restarts at once, then 1 s, 2 s, 4 s (the cap) after each exit.
    assert gaps[0] < 1.0, gaps
    for gap, delay in zip(gaps[1:], (1, 2, 4), strict=True):
        assert delay - 0.05 <= gap < delay + 1.5, gaps


def test_small_memory_limit_ends_in_oom_killed(node: DockerNode, tmp_path: Path) -> None:
    inst = instance(
        "hog",
        node="oom",
        restartPolicy="Never",
        containers=[
            {
                "name": "main",
                "image": IMAGE,
                "command": sh("tail /dev/zero"),
                "resources": {"limits": {"memory": "16Mi"}},
            }
        ],
    )

    async def scenario() -> None:
        async with Agent(node, name="oom", volumes_dir=tmp_path) as agent:
            agent.engine.set_desired([inst])
            await until(lambda: agent.phase("hog") == "Failed", seconds=30, message="failed")
            status = agent.reporter.last("hog")
            assert status is not None and status.reason == "OOMKilled"
            assert status.container_statuses is not None
            state = status.container_statuses[0].state
            assert state is not None and state.terminated is not None
            assert (state.terminated.reason, state.terminated.exit_code) == ("OOMKilled", 137)

    run_in_netns(node.netns_path, scenario, timeout=60)


def test_run_to_completion_ends_succeeded_or_failed_and_frees_the_sandbox(
    node: DockerNode, tmp_path: Path
) -> None:
    done = instance(
        "done",
        node="once",
        restartPolicy="Never",
        containers=[
            {"name": "main", "image": IMAGE, "command": sh("echo all good")},
            {"name": "also", "image": IMAGE, "command": ["true"]},
        ],
    )
    broken = instance(
        "broken",
        node="once",
        restartPolicy="OnFailure",
        containers=[
            {"name": "ok", "image": IMAGE, "command": ["true"]},
            {"name": "bad", "image": IMAGE, "command": sh("echo nope; exit 2")},
        ],
    )

    async def scenario() -> None:
        policy = BackoffPolicy(initial_seconds=0.2, max_seconds=0.4)
        async with Agent(node, name="once", volumes_dir=tmp_path, crash_backoff=policy) as agent:
            agent.engine.set_desired([done, broken])
            await until(lambda: agent.phase("done") == "Succeeded", seconds=30, message="done")
            status = agent.reporter.last("done")
            assert status is not None and status.reason == "Completed"
            assert status.container_statuses is not None
            state = status.container_statuses[0].state
            assert state is not None and state.terminated is not None
            assert (state.terminated.exit_code, state.terminated.message) == (0, "all good")

            async def sandbox_stopped() -> bool:
                records = await agent.records("uid-done")
                return not [r for r in records if r.is_sandbox and r.state is RunState.RUNNING]

            await until(
                sandbox_stopped, seconds=10, message="sandbox of a finished instance stopped"
            )
            # OnFailure: "bad" keeps restarting, "ok" is never run again.
            await until(
                lambda: (
                    (s := agent.reporter.last("broken")) is not None
                    and s.restart_count is not None
                    and s.restart_count >= 2
                ),
                seconds=30,
                message="bad restarted",
            )
            status = agent.reporter.last("broken")
            assert status is not None and status.phase == "Running"
            assert status.container_statuses is not None
            ok = next(c for c in status.container_statuses if c.name == "ok")
            assert ok.restart_count == 0

    run_in_netns(node.netns_path, scenario, timeout=90)


def test_docker_die_event_wakes_the_sync_without_waiting_for_the_relist(
    node: DockerNode, tmp_path: Path
) -> None:
    inst = instance(
        "flaky",
        node="events",
        containers=[{"name": "main", "image": IMAGE, "command": sh("sleep 1; exit 1")}],
    )

    async def scenario() -> float:
        async with Agent(
            node,
            name="events",
            volumes_dir=tmp_path,
            relist_period_seconds=60,
            resync_period_seconds=60,
        ) as agent:
            agent.engine.set_desired([inst])

            async def restarted() -> float | None:
                records = {
                    r.restart_count: r for r in await agent.records("uid-flaky") if not r.is_sandbox
                }
                first, second = records.get(0), records.get(1)
                if first and second and first.finished_at and second.started_at:
                    return second.started_at - first.finished_at
                return None

            return float(await until(restarted, seconds=20, message="restarted"))

    gap = run_in_netns(node.netns_path, scenario, timeout=60)
    assert gap < 2.0  # a relist or resync would have taken 60 s


def test_a_pass_lists_the_engine_only_when_it_may_have_changed(
    node: DockerNode, tmp_path: Path
) -> None:
    """On a real dockerd the events of our own start and removal are logged before the read
    that follows them, so they wake no pass that lists the instance's containers again."""
    inst = instance(
        "quiet",
        node="reads",
        containers=[{"name": "main", "image": IMAGE, "command": ["sleep", "600"]}],
    )
    listings: list[int] = []

    async def scenario() -> None:
        async with Agent(node, name="reads", volumes_dir=tmp_path) as agent:
            listed = agent.runtime.list_containers

            async def counted(instance_uid: UID | None = None) -> list[ContainerRecord]:
                if instance_uid == "uid-quiet":
                    listings.append(1)
                return await listed(instance_uid)

            agent.runtime.list_containers = counted  # type: ignore[method-assign]
            agent.engine.set_desired([])
            await asyncio.sleep(1.0)  # the first relists, before the Instance exists
            agent.engine.put(inst)
            await until(lambda: agent.phase("quiet") == "Running", seconds=30, message="running")
            await asyncio.sleep(1.0)  # its start's event, the confirming pass
            started = len(listings)
            labelled = dataclasses.replace(inst.metadata, labels={"tier": "front"})
            agent.engine.put(dataclasses.replace(inst, metadata=labelled))
            await asyncio.sleep(1.0)
            relabelled = len(listings)
            agent.engine.put(deleting(inst))
            cleaned = agent.reporter.cleaned
            await until(lambda: "quiet" in cleaned, seconds=30, message="cleaned up")
            await asyncio.sleep(1.0)  # the die and destroy events of the removal
            assert (started, relabelled, len(listings)) == (2, 2, 3)

    run_in_netns(node.netns_path, scenario, timeout=90)


def test_deletion_sends_sigterm_and_waits_out_the_grace_period(
    node: DockerNode, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    polite = (
        "trap 'echo TERM >> /out/log; sleep 1; echo done >> /out/log; exit 0' TERM; "
        "echo up >> /out/log; while true; do sleep 0.2; done"
    )
    volumes = [{"name": "out", "hostPath": {"path": str(out)}}]
    mounts = [{"name": "out", "mountPath": "/out"}]
    handler = instance(
        "polite",
        node="grace",
        terminationGracePeriodSeconds=5,
        volumes=volumes,
        containers=[
            {"name": "main", "image": IMAGE, "command": sh(polite), "volumeMounts": mounts}
        ],
    )
    stubborn = instance(
        "stubborn",
        node="grace",
        terminationGracePeriodSeconds=2,
        containers=[{"name": "main", "image": IMAGE, "command": sh("trap '' TERM; sleep 1000")}],
    )

    async def scenario() -> dict[str, float]:
        async with Agent(node, name="grace", volumes_dir=tmp_path / "v") as agent:
            agent.engine.set_desired([handler, stubborn])

            def both_running() -> bool:
                return agent.phase("polite") == agent.phase("stubborn") == "Running"

            await until(both_running, seconds=30, message="both running")
            await until(lambda: (out / "log").exists(), seconds=10, message="log written")
            took = {}
            for inst in (handler, stubborn):
                name = inst.metadata.name or ""
                started = time.monotonic()
                agent.engine.put(deleting(inst))
                cleaned = agent.reporter.cleaned
                await until(lambda: name in cleaned, seconds=30, message=name)  # noqa: B023
                took[name] = time.monotonic() - started
                assert not await agent.records(f"uid-{name}")
            assert "Killing" in agent.reporter.reasons("stubborn")
            return took

    took = run_in_netns(node.netns_path, scenario, timeout=120)
    assert (out / "log").read_text().split() == ["up", "TERM", "done"]
    assert 1.0 <= took["polite"] < 5.0  # its handler's second, not the 5 s grace period
    assert 2.0 <= took["stubborn"] < 6.0  # killed when its 2 s were over


def test_instance_rebound_to_another_node_is_removed_from_the_first(
    node: DockerNode, tmp_path: Path
) -> None:
    on_a = instance(
        "moving",
        node="node-a",
        containers=[{"name": "main", "image": IMAGE, "command": ["sleep", "1000"]}],
    )
    on_b = instance(
        "moving",
        node="node-b",
        containers=[{"name": "main", "image": IMAGE, "command": ["sleep", "1000"]}],
    )

    async def scenario() -> None:
        async with (
            Agent(node, name="node-a", volumes_dir=tmp_path / "a") as a,
            Agent(node, name="node-b", volumes_dir=tmp_path / "b") as b,
        ):
            a.engine.set_desired([on_a])
            b.engine.set_desired([])
            await until(lambda: a.phase("moving") == "Running", seconds=30, message="on a")
            a.engine.put(on_b)
            b.engine.put(on_b)
            await until(lambda: b.phase("moving") == "Running", seconds=30, message="on b")

            async def gone_from_a() -> bool:
                return not await a.records("uid-moving")

            await until(gone_from_a, seconds=30, message="removed from node-a")
            assert len(await b.running("uid-moving", "main")) == 1

    run_in_netns(node.netns_path, scenario, timeout=90)


def test_containers_without_our_labels_are_never_touched(node: DockerNode, tmp_path: Path) -> None:
    client = node.client()
    half_labelled = client.containers.run(
        IMAGE, ["sleep", "1000"], detach=True, labels={"dev.kopflet.role": "app"}
    )
    plain = client.containers.run(IMAGE, ["sleep", "1000"], detach=True)

    async def scenario() -> None:
        async with Agent(
            node, name="careful", volumes_dir=tmp_path, relist_period_seconds=0.2
        ) as agent:
            agent.engine.set_desired([])
            await asyncio.sleep(1.5)
            with pytest.raises(NotOurs):
                await agent.runtime.stop_container(ContainerID(plain.id), grace_seconds=0)
            with pytest.raises(NotOurs):
                await agent.runtime.remove_container(ContainerID(half_labelled.id))

    try:
        run_in_netns(node.netns_path, scenario, timeout=60)
        for container in (half_labelled, plain):
            container.reload()
            assert container.status == "running"
    finally:
        for container in (half_labelled, plain):
            container.remove(force=True)
        client.close()


def most_in_flight(events: list[dict[str, Any]]) -> int:
    """The most containers between their engine's create and start events at one moment."""
    edges = sorted(
        (e["timeNano"], 1 if e["Action"] == "create" else -1)
        for e in events
        if e.get("Type") == "container" and e.get("Action") in ("create", "start")
    )
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


@pytest.mark.parametrize("limit", [2, 0])
def test_a_burst_is_created_and_started_at_most_the_parallel_starts_at_once(
    node: DockerNode, tmp_path: Path, limit: int
) -> None:
    """Eight instances bound at once: with a limit of 2 the engine's own events never show
    more than two containers between create and start; with none (0) they show more, so the
    measure can see what the limit prevents."""
    name = f"gate-{limit}"
    burst = [
        instance(
            f"burst-{i}",
            node=name,
            containers=[{"name": "main", "image": IMAGE, "command": ["sleep", "1000"]}],
        )
        for i in range(8)
    ]
    client = node.client()
    since = time.time() - 1

    async def scenario() -> None:
        async with Agent(node, name=name, volumes_dir=tmp_path, max_parallel_starts=limit) as agent:
            agent.engine.set_desired(burst)
            await until(
                lambda: all(agent.phase(i.metadata.name or "") == "Running" for i in burst),
                seconds=60,
                message="the burst running",
            )

    try:
        run_in_netns(node.netns_path, scenario, timeout=120)
        events = list(
            client.events(
                since=since,
                until=time.time() + 1,
                filters={"label": f"dev.kopflet.node={name}"},
                decode=True,
            )
        )
    finally:
        client.close()
    assert sum(e.get("Action") == "start" for e in events) == len(burst)
    if limit:
        assert most_in_flight(events) <= limit
    else:
        assert most_in_flight(events) > 2
