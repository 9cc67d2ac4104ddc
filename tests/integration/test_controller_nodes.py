"""Node IPAM and node lifecycle on the real API server: unique subnets, and a node whose Lease
expires going Ready=Unknown, then losing its Instances to healthy nodes."""

from __future__ import annotations

import ipaddress
import time

import kubernetes
from test_controller_harness import (
    Api,
    FakeNodes,
    admin,
    condition,
    controllers,
    fake_nodes,
    instances_of,
    wait_available,
    workload,
)

from conftest import TestCluster
from kopflet.api.constants import NODEAGENT_PLURAL, SYSTEM_NAMESPACE, WORKLOAD_PLURAL
from support import wait_for

__all__ = ["admin", "controllers", "fake_nodes"]

CLUSTER_CIDR = ipaddress.IPv4Network("10.244.0.0/16")
GRACE, EVICTION = 40.0, 30.0  # the controller's defaults


def subnet_of(admin: Api, node: str) -> str | None:
    return ((admin.get(NODEAGENT_PLURAL, node) or {}).get("spec") or {}).get("instanceCIDR")


def test_every_node_gets_a_subnet_of_its_own_recorded_and_freed_with_the_node(
    cluster: TestCluster, admin: Api, fake_nodes: FakeNodes
) -> None:
    names = [fake_nodes.add() for _ in range(3)]
    subnets = [
        wait_for(lambda n=n: subnet_of(admin, n), timeout=30, message=f"{n} gets a subnet")
        for n in names
    ]
    networks = [ipaddress.IPv4Network(s) for s in subnets]
    assert len(set(networks)) == 3
    assert all(n.prefixlen == 24 and n.subnet_of(CLUSTER_CIDR) for n in networks)
    # Every subnet in use, on any node of the cluster, is unique.
    everyone = [subnet_of(admin, a["metadata"]["name"]) for a in admin.list(NODEAGENT_PLURAL)]
    taken = [s for s in everyone if s]
    assert len(taken) == len(set(taken))

    record_name = "instancecidr-" + subnets[0].replace(".", "-").replace("/", "-")
    record = admin.coordination.read_namespaced_lease(record_name, SYSTEM_NAMESPACE)
    (owner,) = record.metadata.owner_references
    assert (owner.kind, owner.name) == ("NodeAgent", names[0])

    admin.delete(NODEAGENT_PLURAL, names[0])

    def record_gone() -> bool:
        try:
            admin.coordination.read_namespaced_lease(record_name, SYSTEM_NAMESPACE)
        except kubernetes.client.ApiException as error:
            return error.status == 404
        return False

    wait_for(
        record_gone,
        timeout=60,
        message="the garbage collector frees the node's subnet",
        diagnose=lambda: cluster.log_tail("kube-controller-manager.log"),
    )


def test_a_silent_node_goes_unknown_then_its_instances_move_to_a_healthy_node(
    cluster: TestCluster, admin: Api, fake_nodes: FakeNodes, namespace: str
) -> None:
    doomed, healthy = fake_nodes.add(), fake_nodes.add()
    admin.create(
        WORKLOAD_PLURAL, workload("web", replicas=2, node_selector=fake_nodes.selector), namespace
    )
    diagnose = lambda: cluster.diagnose("workload", "web", namespace)  # noqa: E731
    wait_available(admin, namespace, "web", 2, diagnose=diagnose)
    placed = {i["spec"]["nodeName"] for i in instances_of(admin, namespace, "web")}
    assert placed == {doomed, healthy}  # one Workload spreads over the nodes
    (victim,) = [
        i["metadata"]["name"]
        for i in instances_of(admin, namespace, "web")
        if i["spec"]["nodeName"] == doomed
    ]

    fake_nodes.pause(doomed)  # its agent dies: no Lease renewals, no finalizer releases
    silent = time.monotonic()
    unknown = wait_for(
        lambda: (
            (c := condition(admin.get(NODEAGENT_PLURAL, doomed), "Ready"))
            and c["status"] == "Unknown"
            and c
        ),
        timeout=GRACE + 30,
        message="the node goes Ready=Unknown",
        diagnose=lambda: cluster.diagnose("nodeagent", doomed),
    )
    marked = time.monotonic()
    assert unknown["reason"] == "NodeStatusUnknown"
    assert marked - silent > GRACE - 5  # the grace period, not sooner

    def evicted() -> bool:
        item = next(
            (i for i in instances_of(admin, namespace, "web") if i["metadata"]["name"] == victim),
            None,
        )
        return item is None or bool(item["metadata"].get("deletionTimestamp"))

    wait_for(evicted, timeout=EVICTION + 30, message="its instance is evicted", diagnose=diagnose)
    assert time.monotonic() - marked > EVICTION - 5

    def moved() -> bool:
        # The Workload's status may still count the evicted replica for a moment: look at
        # the Instances themselves (the replacement is unbound until the scheduler binds it).
        running = [
            i
            for i in instances_of(admin, namespace, "web")
            if not i["metadata"].get("deletionTimestamp")
        ]
        return len(running) == 2 and {i["spec"].get("nodeName") for i in running} == {healthy}

    wait_for(moved, timeout=60, message="both replicas on the healthy node", diagnose=diagnose)
    wait_available(admin, namespace, "web", 2, timeout=30, diagnose=diagnose)

    # Nobody will ever stop its containers: the controller releases the agent's finalizer.
    wait_for(
        lambda: (
            victim not in {i["metadata"]["name"] for i in instances_of(admin, namespace, "web")}
        ),
        timeout=EVICTION + 40,
        message="the evicted instance is finally gone",
        diagnose=diagnose,
    )
    reasons = cluster.kubectl(
        "-n", namespace, "get", "events", "-o", "jsonpath={.items[*].reason}"
    ).stdout
    assert "Evicted" in reasons
