"""Crash-only, through the API: an agent killed with SIGKILL mid-rollout and started again
leaves no twin and no orphan, finishes deletions it missed, and reports everything Ready."""

from __future__ import annotations

import time
from collections import Counter

import kubernetes
import pytest
from agent_nodes import (
    Admin,
    Agents,
    admin_api,
    agents,
    all_ours,
    containers_of,
    instance_body,
    running_ready,
)

from conftest import TestCluster
from kopflet.agent.runtime.labels import INSTANCE_UID_LABEL, ROLE_LABEL
from kopflet.api.constants import GROUP, INSTANCE_PLURAL, VERSION
from support import wait_for

pytestmark = pytest.mark.integration
__all__ = ["admin_api", "agents"]

PER_NODE = 10


def test_kill_9_of_an_agent_during_a_30_instance_rollout_leaves_no_twin_and_no_orphan(
    cluster: TestCluster, agents: Agents, admin_api: Admin, namespace: str
) -> None:
    victim = cluster.nodes[1]
    # Two instances on the victim that will be deleted while its agent is dead: one still held
    # by the agent's finalizer, one whose finalizer an admin (or the controller, for a node
    # gone too long) removes, so that it is gone from the API altogether.
    for name in ("held", "forced"):
        admin_api.create_instance(
            namespace,
            instance_body(
                name, node=victim.name, containers=[{"name": "main", "command": ["sleep", "3600"]}]
            ),
        )
    uids = {}
    for name in ("held", "forced"):
        obj = wait_for(
            lambda name=name: (o := admin_api.instance(namespace, name)) and running_ready(o) and o,
            timeout=90,
            message=f"{name} running",
            diagnose=lambda name=name: cluster.diagnose("instance", name, namespace),
        )
        uids[name] = obj["metadata"]["uid"]

    names = [f"r{i:02d}-{node.name}" for node in cluster.nodes for i in range(PER_NODE)]
    for name in names:
        node = name.split("-", 1)[1]
        admin_api.create_instance(
            namespace,
            instance_body(
                name, node=node, containers=[{"name": "main", "command": ["sleep", "3600"]}]
            ),
        )
    # Mid-rollout: some of the victim's containers exist, not all of them yet.
    wait_for(
        lambda: len(all_ours(cluster, victim)) >= 6,
        timeout=90,
        message=f"the rollout started on {victim.name}",
    )
    old = agents.kill(victim)
    try:
        admin_api.delete_instance(namespace, "held")
        admin_api.delete_instance(namespace, "forced")
        admin_api.patch_instance(namespace, "forced", {"metadata": {"finalizers": None}})
        assert admin_api.instance(namespace, "forced") is None
        held = admin_api.instance(namespace, "held")
        assert held is not None and held["metadata"].get("deletionTimestamp")
        time.sleep(2)
    finally:
        agents.restart(victim, old_pid=old)

    def all_ready() -> bool:
        items = admin_api.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, INSTANCE_PLURAL
        )["items"]
        live = [i for i in items if i["metadata"]["name"] in names]
        return len(live) == len(names) and all(running_ready(i) for i in live)

    wait_for(
        all_ready,
        timeout=240,
        message="all 30 instances Running and Ready",
        diagnose=lambda: cluster.log_tail(f"{victim.name}-agent.log", 40),
    )
    wait_for(
        lambda: admin_api.instance(namespace, "held") is None,
        timeout=60,
        message="the deletion missed while the agent was dead completes",
        diagnose=lambda: cluster.diagnose("instance", "held", namespace),
    )
    wait_for(
        lambda: (
            not containers_of(cluster, victim, uids["forced"])
            and not containers_of(cluster, victim, uids["held"])
        ),
        timeout=60,
        message="containers of deleted instances removed",
    )

    items = admin_api.custom.list_namespaced_custom_object(
        GROUP, VERSION, namespace, INSTANCE_PLURAL
    )["items"]
    live_uids = {i["metadata"]["uid"] for i in items}
    for node in cluster.nodes:
        ours = all_ours(cluster, node)
        mine = [c for c in ours if c["Labels"][INSTANCE_UID_LABEL] in live_uids]
        per_instance = Counter(
            (c["Labels"][INSTANCE_UID_LABEL], c["Labels"][ROLE_LABEL]) for c in mine
        )
        twins = {k: n for k, n in per_instance.items() if n != 1}
        assert not twins, f"{node.name}: {twins}"
        # One container an Instance: it holds the network itself, no sandbox beside it.
        assert len(per_instance) == PER_NODE, (node.name, len(per_instance))
        assert {role for _, role in per_instance} == {"app"}, per_instance
        assert all(c["State"] == "running" for c in mine)
        orphans = [
            c["Labels"][INSTANCE_UID_LABEL]
            for c in ours
            if c["Labels"][INSTANCE_UID_LABEL] in uids.values()
        ]
        assert not orphans, f"{node.name}: containers of deleted instances {orphans}"
    with pytest.raises(kubernetes.client.ApiException):
        admin_api.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, INSTANCE_PLURAL, "forced"
        )
