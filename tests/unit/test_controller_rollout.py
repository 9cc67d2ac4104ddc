"""The Workload planner: replicas, deletion order, RollingUpdate bounds, Recreate."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kopflet.api import Instance, Timestamp, Workload, format_timestamp
from kopflet.api.constants import TEMPLATE_HASH_LABEL
from kopflet.controller.instance_state import is_available, is_terminating
from kopflet.controller.rollout import deletion_order, plan_rollout
from kopflet.controller.template_hash import instance_name, template_hash

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
_counter = itertools.count()


def stamp(seconds_ago: float) -> Timestamp:
    return format_timestamp(NOW - timedelta(seconds=seconds_ago))


def make_workload(
    *,
    replicas: int = 3,
    env: str = "v1",
    strategy: dict[str, Any] | None = None,
    min_ready_seconds: int | None = None,
) -> Workload:
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "containers": [
                    {"name": "main", "image": "busybox", "env": [{"name": "V", "value": env}]}
                ]
            },
        },
    }
    if strategy:
        spec["strategy"] = strategy
    if min_ready_seconds is not None:
        spec["minReadySeconds"] = min_ready_seconds
    return Workload.from_dict(
        {
            "metadata": {"name": "web", "namespace": "ns", "uid": "wl-uid", "generation": 1},
            "spec": spec,
        }
    )


def make_instance(
    workload: Workload,
    *,
    node: str | None = "n1",
    ready: bool = True,
    age: float = 100,
    ready_for: float = 100,
    phase: str = "Running",
    deleting: bool = False,
) -> Instance:
    revision = template_hash(workload.spec.template)
    n = next(_counter)
    meta: dict[str, Any] = {
        "name": instance_name("web", revision, f"x{n:04d}"),
        "namespace": "ns",
        "uid": f"uid-{n}",
        "creationTimestamp": stamp(age),
        "labels": {"app": "web", TEMPLATE_HASH_LABEL: revision},
        "ownerReferences": [
            {
                "apiVersion": "kopflet.dev/v1alpha1",
                "kind": "Workload",
                "name": "web",
                "uid": "wl-uid",
                "controller": True,
            }
        ],
    }
    if deleting:
        meta["deletionTimestamp"] = stamp(0)
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "busybox"}]}
    if node:
        spec["nodeName"] = node
    status: dict[str, Any] = {"phase": phase if node else "Pending"}
    if ready:
        status["conditions"] = [
            {"type": "Ready", "status": "True", "lastTransitionTime": stamp(ready_for)}
        ]
    return Instance.from_dict({"metadata": meta, "spec": spec, "status": status})


def test_missing_replicas_are_created_and_none_deleted() -> None:
    wl = make_workload(replicas=3)
    plan = plan_rollout(wl, [make_instance(wl)], now=NOW)
    assert (plan.create, plan.delete) == (2, ())
    assert plan.revision == template_hash(wl.spec.template)


def test_scale_down_removes_unscheduled_then_not_ready_then_newest() -> None:
    wl = make_workload(replicas=1)
    old_ready = make_instance(wl, age=300)
    new_ready = make_instance(wl, age=10)
    not_ready = make_instance(wl, ready=False, age=500)
    unscheduled = make_instance(wl, node=None, ready=False, age=900)
    plan = plan_rollout(wl, [old_ready, new_ready, not_ready, unscheduled], now=NOW)
    assert plan.create == 0
    assert [i.metadata.name for i in plan.delete] == [
        unscheduled.metadata.name,
        not_ready.metadata.name,
        new_ready.metadata.name,
    ]


def test_deletion_order_puts_pending_before_running_when_both_are_not_ready() -> None:
    wl = make_workload()
    running = make_instance(wl, ready=False, phase="Running", age=5)
    pending = make_instance(wl, ready=False, phase="Pending", age=50)
    assert deletion_order([running, pending]) == [pending, running]


def test_terminating_instances_do_not_count_as_replicas() -> None:
    wl = make_workload(replicas=2)
    instances = [make_instance(wl), make_instance(wl, deleting=True)]
    assert plan_rollout(wl, instances, now=NOW).create == 1


def test_finished_instances_are_cleaned_up_and_replaced() -> None:
    wl = make_workload(replicas=1)
    done = make_instance(wl, ready=False, phase="Succeeded")
    plan = plan_rollout(wl, [done], now=NOW)
    assert (plan.create, plan.delete) == (1, (done,))


def test_rolling_update_surges_first_then_deletes_old_as_new_ones_become_available() -> None:
    old_wl = make_workload(replicas=3)
    new_wl = make_workload(
        replicas=3,
        env="v2",
        strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
    )
    olds = [make_instance(old_wl) for _ in range(3)]
    plan = plan_rollout(new_wl, olds, now=NOW)
    assert (plan.create, plan.delete) == (1, ())  # surge by one, delete nothing yet

    fresh = make_instance(new_wl, ready=False, age=1)
    plan = plan_rollout(new_wl, [*olds, fresh], now=NOW)
    assert (plan.create, plan.delete) == (0, ())  # the new one is not available yet

    fresh_ready = replace(fresh, status=make_instance(new_wl).status)
    plan = plan_rollout(new_wl, [*olds, fresh_ready], now=NOW)
    assert plan.create == 0 and len(plan.delete) == 1 and plan.delete[0] in olds


def test_unavailable_old_instances_are_removed_without_spending_the_budget() -> None:
    old_wl = make_workload(replicas=2)
    new_wl = make_workload(
        replicas=2,
        env="v2",
        strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
    )
    broken = make_instance(old_wl, ready=False)
    healthy = make_instance(old_wl)
    plan = plan_rollout(new_wl, [broken, healthy], now=NOW)
    # One unavailable already: deleting the healthy one would leave none available.
    assert plan.delete == (broken,)


def test_min_ready_seconds_delays_availability_and_asks_to_look_again_then() -> None:
    wl = make_workload(replicas=1, min_ready_seconds=30)
    just_ready = make_instance(wl, ready_for=10)
    plan = plan_rollout(wl, [just_ready], now=NOW)
    assert plan.requeue_after == pytest.approx(20)
    assert not is_available(just_ready, min_ready_seconds=30, now=NOW)


def test_recreate_deletes_all_old_and_waits_for_them_to_be_gone() -> None:
    old_wl = make_workload(replicas=2)
    new_wl = make_workload(replicas=2, env="v2", strategy={"type": "Recreate"})
    olds = [make_instance(old_wl), make_instance(old_wl)]
    plan = plan_rollout(new_wl, olds, now=NOW)
    assert plan.create == 0
    assert {i.metadata.name for i in plan.delete} == {i.metadata.name for i in olds}
    terminating = [make_instance(old_wl, deleting=True)]
    assert plan_rollout(new_wl, terminating, now=NOW).create == 0
    assert plan_rollout(new_wl, [], now=NOW).create == 2


def _simulate(seed: int, *, replicas: int, surge: Any, unavailable: Any) -> None:
    """Drive a rollout with random readiness and deletions completing at random times,
    checking the bounds on every state."""
    rng = random.Random(seed)
    strategy = {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable},
    }
    old_wl = make_workload(replicas=replicas, strategy=strategy)
    new_wl = make_workload(replicas=replicas, env="v2", strategy=strategy)
    max_surge, max_unavailable = new_wl.spec.rolling_limits()
    instances = [make_instance(old_wl) for _ in range(replicas)]
    for _step in range(400):
        plan = plan_rollout(new_wl, instances, now=NOW)
        doomed = {i.metadata.uid for i in plan.delete}
        instances = [
            replace(i, metadata=replace(i.metadata, deletion_timestamp=stamp(0)))
            if i.metadata.uid in doomed
            else i
            for i in instances
        ]
        instances += [make_instance(new_wl, ready=False, age=0) for _ in range(plan.create)]
        active = [i for i in instances if not is_terminating(i)]
        available = [i for i in active if is_available(i, min_ready_seconds=0, now=NOW)]
        assert len(active) <= replicas + max_surge
        assert len(available) >= min(replicas - max_unavailable, replicas)
        # The world moves: an instance becomes ready, a terminating one disappears.
        for i, instance in enumerate(instances):
            if rng.random() < 0.3 and instance.status and not instance.status.conditions:
                instances[i] = replace(instance, status=make_instance(new_wl).status)
        instances = [i for i in instances if not (is_terminating(i) and rng.random() < 0.5)]
        revision = template_hash(new_wl.spec.template)
        if (
            all((i.metadata.labels or {}).get(TEMPLATE_HASH_LABEL) == revision for i in instances)
            and len(active) == replicas
            and len(available) == replicas
        ):
            return
    raise AssertionError("the rollout did not finish")


@pytest.mark.parametrize(
    ("replicas", "surge", "unavailable"),
    [(3, 1, 0), (3, 0, 1), (10, "25%", "25%"), (5, 2, 2), (1, 1, 0), (4, "50%", 0)],
)
def test_random_rollouts_never_break_the_bounds_and_always_finish(
    replicas: int, surge: Any, unavailable: Any
) -> None:
    for seed in range(20):
        _simulate(seed, replicas=replicas, surge=surge, unavailable=unavailable)
