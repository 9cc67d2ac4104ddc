"""Crash-only: an agent SIGKILLed mid-rollout and restarted converges without twins or orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_node import IMAGE, Agent, DockerNode, docker_node, instance, run_in_netns, until

from kopflet.agent.runtime.labels import NODE_LABEL, ROLE_LABEL
from kopflet.agent.runtime.records import RunState

pytestmark = pytest.mark.integration

SOURCE_ROOT = Path(__file__).resolve().parents[2] / "operator"
NODE = "crashy"

# The agent's runtime half as its own process, so that it can die the hard way.
DRIVER = r"""
import asyncio, json, sys
from pathlib import Path
from kopflet.agent.runtime import DockerRuntime, RuntimeConfig, RuntimeEngine
from kopflet.api import Instance

class Quiet:
    async def instance_status(self, instance, status): pass
    def overwritten(self, instance): return False
    async def instance_cleaned_up(self, instance): pass
    def event(self, ref, *, type, reason, message): pass

class NoObjects:
    def config_map(self, namespace, name): return None
    def secret(self, namespace, name): return None

async def main():
    host, node, image, volumes, path = sys.argv[1:6]
    instances = [Instance.from_dict(d) for d in json.loads(Path(path).read_text())]
    engine = RuntimeEngine(
        runtime=DockerRuntime(base_url=host, node=node),
        config=RuntimeConfig(node_name=node, instance_subnet="10.244.7.0/24",
                             sandbox_image=image, volumes_dir=Path(volumes)),
        resolver=NoObjects(), reporter=Quiet())
    engine.set_desired(instances)
    await engine.run()

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def node() -> Iterator[DockerNode]:
    with docker_node() as found:
        yield found


def test_sigkill_mid_rollout_then_restart_leaves_no_duplicate_and_no_orphan(
    node: DockerNode, tmp_path: Path
) -> None:
    instances = [
        instance(
            f"web-{i:02d}",
            node=NODE,
            containers=[{"name": "main", "image": IMAGE, "command": ["sleep", "100000"]}],
        )
        for i in range(30)
    ]
    spec_file = tmp_path / "instances.json"
    spec_file.write_text(json.dumps([i.to_dict() for i in instances]))
    client = node.client()

    def ours() -> list[dict[str, object]]:
        found: list[dict[str, object]] = client.api.containers(
            all=True, filters={"label": f"{NODE_LABEL}={NODE}"}
        )
        return found

    driver = subprocess.Popen(
        [
            sys.executable,
            "-c",
            DRIVER,
            node.docker_host,
            NODE,
            node.image,
            str(tmp_path / "v"),
            str(spec_file),
        ],
        env={**os.environ, "PYTHONPATH": str(SOURCE_ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def running_apps() -> int:
            return sum(
                1
                for c in ours()
                if c["State"] == "running" and (c.get("Labels") or {}).get(ROLE_LABEL) == "app"  # type: ignore[union-attr]
            )

        # Killed in the thick of it: some instances run, others are half made.
        deadline = time.monotonic() + 90
        while running_apps() < 8 and time.monotonic() < deadline:
            assert driver.poll() is None, driver.stderr.read() if driver.stderr else ""
            time.sleep(0.02)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
        at_kill = ours()
        assert len(at_kill) < 60, "the rollout finished before the agent could be killed"
        states = sorted(f"{(c.get('Labels') or {}).get(ROLE_LABEL)}:{c['State']}" for c in at_kill)  # type: ignore[union-attr]
        print(f"at SIGKILL: {len(at_kill)} containers: {states}")
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=10)

    # Five Instances were deleted while the agent was down.
    survivors, deleted = instances[:25], instances[25:]

    async def restart() -> float:
        started = time.monotonic()
        async with Agent(node, name=NODE, volumes_dir=tmp_path / "v") as agent:
            agent.engine.set_desired(survivors)

            def all_ready() -> bool:
                for inst in survivors:
                    status = agent.reporter.last(inst.metadata.name or "")
                    if status is None or status.phase != "Running":
                        return False
                    if not all(c.ready for c in status.container_statuses or ()):
                        return False
                return True

            await until(all_ready, seconds=90, message="every surviving instance ready")
            took = time.monotonic() - started

            async def orphans_gone() -> bool:
                uids = {r.instance_uid for r in await agent.records()}
                return not uids & {i.metadata.uid for i in deleted}

            await until(orphans_gone, seconds=30, message="deleted instances removed")
            records = await agent.records()
            for inst in survivors:
                uid = inst.metadata.uid
                mine = [r for r in records if r.instance_uid == uid]
                running = [r for r in mine if r.state is RunState.RUNNING]
                # One container: it holds the network itself, no sandbox beside it.
                assert len([r for r in running if r.holds_network]) == 1, mine
                assert [r.is_sandbox for r in running] == [False], mine
                assert all(r.state is not RunState.CREATED for r in mine), mine
                status = agent.reporter.last(inst.metadata.name or "")
                # Adopted or finished, never restarted: the crash cost no container its life.
                assert status is not None and status.restart_count == 0
            return took

    try:
        took = run_in_netns(node.netns_path, restart, timeout=150)
    finally:
        client.close()
    print(f"restarted agent converged 25 instances in {took:.1f}s")
