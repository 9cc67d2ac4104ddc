"""Workloads into Instances on the real API server: scaling, rollouts with their bounds checked
on every watched state, Recreate, status conditions, events, garbage collection."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
from test_controller_harness import (
    Api,
    Controllers,
    FakeNodes,
    admin,
    condition,
    controllers,
    fake_nodes,
    instances_of,
    is_ready,
    live,
    wait_available,
    workload,
    workload_status,
)

from conftest import TestCluster
from kopflet.api.constants import (
    AGENT_FINALIZER,
    GROUP,
    INSTANCE_PLURAL,
    TEMPLATE_HASH_LABEL,
    VERSION,
    WORKLOAD_PLURAL,
)
from support import wait_for

__all__ = ["admin", "controllers", "fake_nodes"]


def test_workload_scales_up_and_down_through_the_scale_subresource(
    cluster: TestCluster, admin: Api, fake_nodes: FakeNodes, namespace: str
) -> None:
    fake_nodes.add()
    admin.create(
        WORKLOAD_PLURAL, workload("web", replicas=3, node_selector=fake_nodes.selector), namespace
    )
    diagnose = lambda: cluster.diagnose("workload", "web", namespace)  # noqa: E731
    status = wait_available(admin, namespace, "web", 3, diagnose=diagnose)
    assert status["readySummary"] == "3/3"
    assert status["selector"] == "app=web"

    cluster.kubectl("-n", namespace, "scale", "workload/web", "--replicas=5")
    wait_available(admin, namespace, "web", 5, diagnose=diagnose)
    assert len(live(instances_of(admin, namespace, "web"))) == 5

    names_before = {
        i["metadata"]["name"]: i["metadata"]["creationTimestamp"]
        for i in live(instances_of(admin, namespace, "web"))
    }
    cluster.kubectl("-n", namespace, "scale", "workload/web", "--replicas=2")
    wait_available(admin, namespace, "web", 2, diagnose=diagnose)
    wait_for(
        lambda: len(instances_of(admin, namespace, "web")) == 2,
        timeout=30,
        message="scaled-down instances are gone",
        diagnose=diagnose,
    )
    kept = {i["metadata"]["name"] for i in instances_of(admin, namespace, "web")}
    # All five were scheduled and ready, so the newest went first.
    oldest = sorted(names_before, key=lambda n: (names_before[n], n))
    assert kept == set(oldest[:2])

    events = cluster.kubectl(
        "-n",
        namespace,
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=web",
        "-o",
        "jsonpath={.items[*].message}",
    ).stdout
    assert "Scaled up revision" in events and "Scaled down revision" in events


def test_kubectl_wait_for_available_returns_once_the_workload_is_available(
    cluster: TestCluster, admin: Api, fake_nodes: FakeNodes, namespace: str
) -> None:
    fake_nodes.add()
    admin.create(
        WORKLOAD_PLURAL, workload("api", replicas=2, node_selector=fake_nodes.selector), namespace
    )
    proc = cluster.kubectl(
        "-n",
        namespace,
        "wait",
        "--for=condition=Available",
        "workload/api",
        "--timeout=60s",
        timeout=90,
    )
    assert "condition met" in proc.stdout
    progressing = condition(admin.get(WORKLOAD_PLURAL, "api", namespace), "Progressing")
    wait_for(
        lambda: (
            condition(admin.get(WORKLOAD_PLURAL, "api", namespace), "Progressing")["reason"]
            == "NewRevisionAvailable"
        ),
        timeout=30,
        message="rollout complete",
    )
    assert progressing is not None


class BoundsWatcher:
    """Watches a Workload's Instances and checks the rollout bounds on every state it sees."""

    def __init__(
        self, api: Api, namespace: str, app: str, *, replicas: int, surge: int, unavailable: int
    ) -> None:
        self.api, self.namespace, self.app = api, namespace, app
        self.max_active, self.min_available = replicas + surge, replicas - unavailable
        self.state: dict[str, dict[str, Any]] = {}
        self.violations: list[str] = []
        self.revisions_seen: set[frozenset[str]] = set()
        self.states = 0
        self.peak_active = 0
        self._watch = kubernetes.watch.Watch()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, resource_version: str) -> None:
        self._rv = resource_version
        self._thread.start()

    def _run(self) -> None:
        try:
            self._follow()
        except Exception as error:  # the stream is cut when stopped; anything else is a failure
            if not self._stopped:
                self.violations.append(f"watch failed: {error!r}")

    def _follow(self) -> None:
        for event in self._watch.stream(
            self.api.custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            INSTANCE_PLURAL,
            label_selector=f"app={self.app}",
            resource_version=self._rv,
            timeout_seconds=300,
        ):
            obj = event["object"]
            name = obj["metadata"]["name"]
            if event["type"] == "DELETED":
                self.state.pop(name, None)
            else:
                self.state[name] = obj
            self._check()

    def _check(self) -> None:
        active = live(list(self.state.values()))
        available = [i for i in active if is_ready(i)]
        self.states += 1
        self.peak_active = max(self.peak_active, len(active))
        self.revisions_seen.add(
            frozenset(i["metadata"]["labels"][TEMPLATE_HASH_LABEL] for i in active)
        )
        if len(active) > self.max_active:
            self.violations.append(f"{len(active)} active > {self.max_active}")
        if len(available) < self.min_available:
            self.violations.append(f"{len(available)} available < {self.min_available}")

    def stop(self) -> None:
        self._stopped = True
        self._watch.stop()


@pytest.fixture
def slow_ready_nodes(admin: Api, controllers: Controllers) -> Iterator[FakeNodes]:
    nodes = FakeNodes(admin, ready_delay=1.0)
    yield nodes
    nodes.close()


def test_rolling_update_keeps_surge_and_unavailable_bounds_on_every_watched_state(
    cluster: TestCluster, admin: Api, slow_ready_nodes: FakeNodes, namespace: str
) -> None:
    nodes = slow_ready_nodes
    nodes.add()
    nodes.add()
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}}
    admin.create(
        WORKLOAD_PLURAL,
        workload("roll", replicas=6, node_selector=nodes.selector, strategy=strategy),
        namespace,
    )
    diagnose = lambda: cluster.diagnose("workload", "roll", namespace)  # noqa: E731
    wait_available(admin, namespace, "roll", 6, timeout=90, diagnose=diagnose)
    old = {
        i["metadata"]["labels"][TEMPLATE_HASH_LABEL]
        for i in live(instances_of(admin, namespace, "roll"))
    }
    assert len(old) == 1

    listed = admin.custom.list_namespaced_custom_object(
        GROUP, VERSION, namespace, INSTANCE_PLURAL, label_selector="app=roll"
    )
    watcher = BoundsWatcher(admin, namespace, "roll", replicas=6, surge=1, unavailable=1)
    for item in listed["items"]:
        watcher.state[item["metadata"]["name"]] = item
    watcher.start(listed["metadata"]["resourceVersion"])
    try:
        admin.patch(
            WORKLOAD_PLURAL,
            "roll",
            {
                "spec": {
                    "template": {
                        "spec": {
                            "containers": [
                                workload(
                                    "roll", replicas=6, node_selector=nodes.selector, env="v2"
                                )["spec"]["template"]["spec"]["containers"][0]
                            ]
                        }
                    }
                }
            },
            namespace,
        )
        wait_available(admin, namespace, "roll", 6, timeout=120, diagnose=diagnose)
        wait_for(
            lambda: len(instances_of(admin, namespace, "roll")) == 6,
            timeout=30,
            message="old instances are gone",
            diagnose=diagnose,
        )
    finally:
        watcher.stop()
    new = {
        i["metadata"]["labels"][TEMPLATE_HASH_LABEL] for i in instances_of(admin, namespace, "roll")
    }
    assert len(new) == 1 and new != old
    assert watcher.violations == [], watcher.violations[:5]
    assert watcher.states > 12  # every create, bind, ready and delete was checked
    assert frozenset(old | new) in watcher.revisions_seen  # both revisions ran side by side
    assert watcher.peak_active == 7  # the surge was used, never exceeded
    status = workload_status(admin, namespace, "roll")
    assert condition({"status": status}, "Progressing")["reason"] == "NewRevisionAvailable"


def test_recreate_deletes_every_old_instance_before_creating_new_ones(
    cluster: TestCluster, admin: Api, fake_nodes: FakeNodes, namespace: str
) -> None:
    fake_nodes.add()
    admin.create(
        WORKLOAD_PLURAL,
        workload(
            "batch", replicas=3, node_selector=fake_nodes.selector, strategy={"type": "Recreate"}
        ),
        namespace,
    )
    diagnose = lambda: cluster.diagnose("workload", "batch", namespace)  # noqa: E731
    wait_available(admin, namespace, "batch", 3, diagnose=diagnose)
    old_names = {i["metadata"]["name"] for i in instances_of(admin, namespace, "batch")}
    old_created = max(
        i["metadata"]["creationTimestamp"] for i in instances_of(admin, namespace, "batch")
    )
    admin.patch(
        WORKLOAD_PLURAL,
        "batch",
        {"spec": {"template": {"metadata": {"annotations": {"restartedAt": "now"}}}}},
        namespace,
    )
    wait_available(admin, namespace, "batch", 3, diagnose=diagnose)
    current = instances_of(admin, namespace, "batch")
    assert not ({i["metadata"]["name"] for i in current} & old_names)
    assert all(i["metadata"]["creationTimestamp"] >= old_created for i in current)


def unschedulable_message(api: Api, namespace: str, app: str) -> str | None:
    """The message of an Instance's ``Scheduled=False``, once the scheduler has written it."""
    for item in instances_of(api, namespace, app):
        scheduled = condition(item, "Scheduled")
        if scheduled and scheduled["status"] == "False":
            assert scheduled["reason"] == "Unschedulable"
            return str(scheduled["message"])
    return None


def bound_node(api: Api, namespace: str, app: str) -> str | None:
    return next(
        (
            str(i["spec"]["nodeName"])
            for i in instances_of(api, namespace, app)
            if i["spec"].get("nodeName")
        ),
        None,
    )


def test_unschedulable_instance_reports_why_and_is_bound_once_a_node_fits(
    cluster: TestCluster, admin: Api, fake_nodes: FakeNodes, namespace: str
) -> None:
    fake_nodes.add(memory="64Mi")
    fake_nodes.add(ready=False)
    admin.create(
        WORKLOAD_PLURAL,
        workload("big", replicas=1, node_selector=fake_nodes.selector, memory="1Gi"),
        namespace,
    )
    diagnose = lambda: cluster.diagnose("workload", "big", namespace)  # noqa: E731
    message = wait_for(
        lambda: unschedulable_message(admin, namespace, "big"),
        timeout=30,
        message="Scheduled=False",
        diagnose=diagnose,
    )
    assert message.startswith("0/")
    assert "1 insufficient memory" in message
    assert "not ready" in message
    events = cluster.kubectl(
        "-n", namespace, "get", "events", "-o", "jsonpath={.items[*].reason}"
    ).stdout
    assert "FailedScheduling" in events

    fits = fake_nodes.add(memory="4Gi")
    bound = wait_for(
        lambda: bound_node(admin, namespace, "big"),
        timeout=30,
        message="bound once a node fits",
        diagnose=diagnose,
    )
    assert bound == fits


def test_an_unschedulable_instance_is_bound_once_room_is_freed_on_its_node(
    cluster: TestCluster, admin: Api, fake_nodes: FakeNodes, namespace: str
) -> None:
    node = fake_nodes.add(memory="64Mi")  # room for one of 48Mi
    first = workload("first", replicas=1, node_selector=fake_nodes.selector, memory="48Mi")
    admin.create(WORKLOAD_PLURAL, first, namespace)
    wait_for(
        lambda: [i for i in instances_of(admin, namespace, "first") if i["spec"].get("nodeName")],
        timeout=60,
        message="the first bound",
        diagnose=lambda: cluster.diagnose("workload", "first", namespace),
    )
    admin.create(
        WORKLOAD_PLURAL,
        workload("second", replicas=1, node_selector=fake_nodes.selector, memory="48Mi"),
        namespace,
    )
    diagnose = lambda: cluster.diagnose("workload", "second", namespace)  # noqa: E731
    assert "1 insufficient memory" in wait_for(
        lambda: unschedulable_message(admin, namespace, "second"),
        timeout=30,
        message="the second unschedulable",
        diagnose=diagnose,
    )
    # The node does not change; only the first's Instance goes, giving its room back.
    admin.delete(WORKLOAD_PLURAL, "first", namespace)
    bound = wait_for(
        lambda: bound_node(admin, namespace, "second"),
        timeout=60,
        message="the second bound once the first is gone",
        diagnose=diagnose,
    )
    assert bound == node
    assert not instances_of(admin, namespace, "first")


def test_binding_never_overcommits_a_node_under_a_burst(
    cluster: TestCluster, admin: Api, fake_nodes: FakeNodes, namespace: str
) -> None:
    node = fake_nodes.add(memory="160Mi", cpu="100")  # room for exactly 10 of 16Mi
    admin.create(
        WORKLOAD_PLURAL,
        workload("burst", replicas=25, node_selector=fake_nodes.selector),
        namespace,
    )
    diagnose = lambda: cluster.diagnose("workload", "burst", namespace)  # noqa: E731
    wait_for(
        lambda: (
            sum(1 for i in instances_of(admin, namespace, "burst") if i["spec"].get("nodeName"))
            >= 10
        ),
        timeout=60,
        message="10 instances bound",
        diagnose=diagnose,
    )
    wait_for(
        lambda: (
            sum(
                1
                for i in instances_of(admin, namespace, "burst")
                if (condition(i, "Scheduled") or {}).get("status") == "False"
            )
            == 15
        ),
        timeout=60,
        message="15 reported unschedulable",
        diagnose=diagnose,
    )
    bound = [i for i in instances_of(admin, namespace, "burst") if i["spec"].get("nodeName")]
    assert len(bound) == 10
    assert {i["spec"]["nodeName"] for i in bound} == {node}


def test_the_bind_puts_the_agents_finalizer_on_in_the_same_write(
    cluster: TestCluster, admin: Api, fake_nodes: FakeNodes, namespace: str
) -> None:
    node = fake_nodes.add()
    admin.create(
        WORKLOAD_PLURAL, workload("held", replicas=2, node_selector=fake_nodes.selector), namespace
    )
    diagnose = lambda: cluster.diagnose("workload", "held", namespace)  # noqa: E731

    def both_bound() -> list[dict[str, Any]] | None:
        found = [i for i in instances_of(admin, namespace, "held") if i["spec"].get("nodeName")]
        return found if len(found) == 2 else None

    bound = wait_for(both_bound, timeout=60, message="2 instances bound", diagnose=diagnose)
    finalizer = f'v:"{AGENT_FINALIZER}"'
    for instance in bound:
        assert instance["spec"]["nodeName"] == node
        assert AGENT_FINALIZER in instance["metadata"]["finalizers"]
        # The API server names each write's field manager after its User-Agent: the
        # controller's bind holds nodeName and the finalizer, so nobody wrote the finalizer
        # on its own (the stand-in agent adds it only where it is missing, as the agent does).
        owners = {
            entry["manager"]
            for entry in instance["metadata"]["managedFields"]
            if finalizer in entry["fieldsV1"].get("f:metadata", {}).get("f:finalizers", {})
        }
        assert owners == {"kopflet-controller"}, instance["metadata"]["managedFields"]
        [bind] = [
            entry
            for entry in instance["metadata"]["managedFields"]
            if entry["manager"] == "kopflet-controller" and not entry.get("subresource")
        ]
        assert "f:nodeName" in bind["fieldsV1"]["f:spec"]


def test_deleting_a_workload_garbage_collects_its_instances(
    cluster: TestCluster, admin: Api, fake_nodes: FakeNodes, namespace: str
) -> None:
    fake_nodes.add()
    admin.create(
        WORKLOAD_PLURAL, workload("gone", replicas=3, node_selector=fake_nodes.selector), namespace
    )
    wait_available(admin, namespace, "gone", 3)
    owner = admin.get(WORKLOAD_PLURAL, "gone", namespace)
    assert owner is not None
    for item in instances_of(admin, namespace, "gone"):
        (ref,) = item["metadata"]["ownerReferences"]
        assert ref["uid"] == owner["metadata"]["uid"] and ref["controller"] is True
    admin.delete(WORKLOAD_PLURAL, "gone", namespace)
    wait_for(
        lambda: instances_of(admin, namespace, "gone") == [],
        timeout=60,
        message="the garbage collector removes the instances",
        diagnose=lambda: cluster.log_tail("kube-controller-manager.log"),
    )


def test_progress_deadline_exceeded_when_instances_never_become_ready(
    cluster: TestCluster, admin: Api, fake_nodes: FakeNodes, namespace: str
) -> None:
    fake_nodes.add(memory="8Mi")  # nothing fits: no progress at all
    admin.create(
        WORKLOAD_PLURAL,
        workload(
            "stuck", replicas=1, node_selector=fake_nodes.selector, progress_deadline_seconds=5
        ),
        namespace,
    )
    got = wait_for(
        lambda: (
            (c := condition(admin.get(WORKLOAD_PLURAL, "stuck", namespace), "Progressing"))
            and c["status"] == "False"
            and c
        ),
        timeout=40,
        message="Progressing=False",
        diagnose=lambda: cluster.diagnose("workload", "stuck", namespace),
    )
    assert got["reason"] == "ProgressDeadlineExceeded"
    available = condition(admin.get(WORKLOAD_PLURAL, "stuck", namespace), "Available")
    assert available is not None and available["status"] == "False"
