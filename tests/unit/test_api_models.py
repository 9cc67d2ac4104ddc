"""The typed models: lossless round-trips of the examples and the core rules they carry."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from kopflet.api import (
    Condition,
    Container,
    Endpoint,
    EndpointPort,
    Instance,
    InstanceStatus,
    LabelSelector,
    LabelSelectorRequirement,
    ModelError,
    NodeAgent,
    ObjectMeta,
    Probe,
    ProxyService,
    ProxyServiceSpec,
    ResourceRequirements,
    ServicePort,
    TCPSocketAction,
    Workload,
    effective_image_pull_policy,
    image_tag,
    scaled_value,
    set_condition,
    summarize_endpoints,
    summarize_ports,
)
from kopflet.api._codec import Model

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MODELS: dict[str, type[Model]] = {
    "Workload": Workload,
    "Instance": Instance,
    "ProxyService": ProxyService,
    "NodeAgent": NodeAgent,
}


def _kopflet_objects() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["apiVersion"].startswith("kopflet.dev/"):
                found.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return found


EXAMPLE_OBJECTS = _kopflet_objects()


def test_every_example_file_holds_a_kopflet_object() -> None:
    files = {name.split(":")[0] for name, _ in EXAMPLE_OBJECTS}
    assert files == {p.name for p in EXAMPLES.glob("*.yaml")}
    assert {doc["kind"] for _, doc in EXAMPLE_OBJECTS} >= {"Workload", "Instance", "ProxyService"}


@pytest.mark.parametrize(("name", "doc"), EXAMPLE_OBJECTS, ids=[n for n, _ in EXAMPLE_OBJECTS])
def test_example_round_trips_without_loss(name: str, doc: dict[str, Any]) -> None:
    original = copy.deepcopy(doc)
    model = MODELS[doc["kind"]].from_dict(doc)
    assert model.to_dict() == original
    assert doc == original, "parsing must not modify its input"


def test_absent_optional_fields_stay_absent() -> None:
    manifest = {"name": "c", "image": "busybox:1.35"}
    container = Container.from_dict(manifest)
    assert container.env is None
    assert container.to_dict() == manifest


def test_explicit_empty_list_is_kept_apart_from_absent() -> None:
    # A status patch with `conditions: []` clears them; an absent key would keep them.
    status = InstanceStatus.from_dict({"phase": "Running", "conditions": []})
    assert status.conditions == ()
    assert status.to_dict() == {"phase": "Running", "conditions": []}


def test_status_round_trips_with_core_spellings() -> None:
    status = {
        "phase": "Running",
        "reason": "Running",
        "instanceIP": "10.244.1.5",
        "hostIP": "10.200.0.2",
        "startTime": "2025-01-31T12:00:00Z",
        "restartCount": 2,
        "containerStatuses": [
            {
                "name": "main",
                "ready": True,
                "started": True,
                "restartCount": 2,
                "image": "kopflet/busybox:local",
                "imageID": "sha256:abc",
                "containerID": "docker://0123",
                "imagePullPolicy": "IfNotPresent",
                "state": {"running": {"startedAt": "2025-01-31T12:01:00Z"}},
                "lastState": {
                    "terminated": {
                        "exitCode": 1,
                        "reason": "Error",
                        "containerID": "docker://0042",
                        "finishedAt": "2025-01-31T12:00:59Z",
                    }
                },
            }
        ],
        "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2025-01-31T12:01:02Z"}
        ],
    }
    parsed = InstanceStatus.from_dict(status)
    assert parsed.instance_ip == "10.244.1.5"
    assert parsed.container_statuses is not None
    assert parsed.container_statuses[0].image_id == "sha256:abc"
    assert parsed.to_dict() == status


def test_wrong_shapes_are_refused_with_the_path() -> None:
    bad = {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c", "image": 5}]}}
    with pytest.raises(ModelError, match=r"Instance\.spec\.containers\[0\]\.image: expected str"):
        Instance.from_dict(bad)
    with pytest.raises(ModelError, match="'Sometimes' is not one of"):
        Instance.from_dict(
            {"metadata": {}, "spec": {"containers": [], "restartPolicy": "Sometimes"}}
        )
    with pytest.raises(ModelError, match="image"):
        Container.from_dict({"name": "c"})


def test_models_built_in_code_render_lists_and_maps() -> None:
    instance = Instance(
        metadata=ObjectMeta(name="i", labels={"app": "x"}),
        spec=Instance.from_dict(
            {"metadata": {}, "spec": {"containers": [{"name": "c", "image": "img:1"}]}}
        ).spec,
    )
    assert instance.to_dict() == {
        "apiVersion": "kopflet.dev/v1alpha1",
        "kind": "Instance",
        "metadata": {"name": "i", "labels": {"app": "x"}},
        "spec": {"containers": [{"name": "c", "image": "img:1"}]},
    }


@pytest.mark.parametrize(
    ("image", "policy", "expected"),
    [
        ("busybox", None, "Always"),
        ("busybox:latest", None, "Always"),
        ("busybox:1.35.0", None, "IfNotPresent"),
        ("localhost:5000/busybox", None, "Always"),
        ("localhost:5000/busybox:1.35", None, "IfNotPresent"),
        ("busybox@sha256:" + "a" * 64, None, "IfNotPresent"),
        ("busybox:latest@sha256:" + "a" * 64, None, "Always"),
        ("busybox:latest", "Never", "Never"),
        ("busybox:1.35.0", "Always", "Always"),
    ],
)
def test_image_pull_policy_follows_the_core_rule(image: str, policy: Any, expected: str) -> None:
    assert effective_image_pull_policy(image, policy) == expected
    container = Container(name="c", image=image, image_pull_policy=policy)
    assert container.effective_image_pull_policy == expected


def test_registry_port_is_not_a_tag() -> None:
    assert image_tag("localhost:5000/team/app") is None
    assert image_tag("localhost:5000/team/app:v2") == "v2"


def test_label_selector_matches_labels_and_expressions() -> None:
    selector = LabelSelector(
        match_labels={"app": "web"},
        match_expressions=(
            LabelSelectorRequirement(key="tier", operator="In", values=("a", "b")),
            LabelSelectorRequirement(key="canary", operator="DoesNotExist"),
        ),
    )
    assert selector.matches({"app": "web", "tier": "a"})
    assert not selector.matches({"app": "web", "tier": "c"})
    assert not selector.matches({"app": "web", "tier": "a", "canary": "yes"})
    assert not selector.matches(None)
    assert selector.to_selector_string() == "app=web,tier in (a,b),!canary"


@pytest.mark.parametrize(
    ("replicas", "surge", "unavailable", "expected"),
    [
        (None, None, None, (1, 0)),
        (4, "25%", "25%", (1, 1)),
        (10, "25%", "25%", (3, 2)),
        (3, 1, 0, (1, 0)),
        (3, 0, 0, (0, 1)),
        (2, "0%", "10%", (0, 1)),
    ],
)
def test_rolling_limits_round_surge_up_and_unavailable_down(
    replicas: int | None, surge: Any, unavailable: Any, expected: tuple[int, int]
) -> None:
    strategy: dict[str, Any] = {"type": "RollingUpdate", "rollingUpdate": {}}
    if surge is not None:
        strategy["rollingUpdate"]["maxSurge"] = surge
    if unavailable is not None:
        strategy["rollingUpdate"]["maxUnavailable"] = unavailable
    spec: dict[str, Any] = {
        "selector": {"matchLabels": {"a": "b"}},
        "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": []}},
        "strategy": strategy,
    }
    if replicas is not None:
        spec["replicas"] = replicas
    workload = Workload.from_dict({"metadata": {"name": "w"}, "spec": spec})
    assert workload.spec.rolling_limits() == expected


def test_scaled_value_refuses_a_bare_string() -> None:
    with pytest.raises(ValueError, match="not a percentage"):
        scaled_value("5", total=10, round_up=True)


def test_probe_defaults_fill_only_absent_timings() -> None:
    probe = Probe(tcp_socket=TCPSocketAction(port=80), period_seconds=2)
    filled = probe.with_defaults()
    assert (filled.period_seconds, filled.timeout_seconds, filled.failure_threshold) == (2, 1, 3)
    assert (filled.initial_delay_seconds, filled.success_threshold) == (0, 1)


def test_a_limit_without_a_request_requests_the_limit() -> None:
    resources = ResourceRequirements(requests={"cpu": "100m"}, limits={"cpu": 1, "memory": "64Mi"})
    assert resources.effective_requests() == {"cpu": "100m", "memory": "64Mi"}


def test_set_condition_keeps_transition_time_while_status_holds() -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    t1 = datetime(2025, 1, 2, tzinfo=UTC)
    first = set_condition((), Condition(type="Ready", status="False", reason="Starting"), now=t0)
    same = set_condition(first, Condition(type="Ready", status="False", reason="Probing"), now=t1)
    flipped = set_condition(same, Condition(type="Ready", status="True"), now=t1)
    assert first[0].last_transition_time == "2025-01-01T00:00:00Z"
    assert same[0].last_transition_time == "2025-01-01T00:00:00Z"
    assert same[0].reason == "Probing"
    assert flipped[0].last_transition_time == "2025-01-02T00:00:00Z"
    assert len(flipped) == 1


def test_service_summaries_read_like_kubectl() -> None:
    spec = ProxyServiceSpec(
        ports=(
            ServicePort(name="http", port=80, target_port="http", node_port=30080),
            ServicePort(name="dns", port=53, protocol="UDP"),
        )
    )
    assert summarize_ports(spec) == "80:30080/TCP,53/UDP"
    assert spec.ports[0].effective_target_port == "http"
    assert spec.ports[1].effective_target_port == 53
    endpoints = [
        Endpoint(ip=f"10.244.0.{i}", ready=i != 2, ports=(EndpointPort(port=8080),))
        for i in range(1, 6)
    ]
    assert summarize_endpoints(endpoints) == (
        "10.244.0.1:8080,10.244.0.3:8080,10.244.0.4:8080 + 1 more..."
    )
    assert summarize_endpoints([]) == "<none>"


def test_client_ip_affinity_defaults_to_three_hours() -> None:
    spec = ProxyServiceSpec.from_dict({"ports": [{"port": 80}], "sessionAffinity": "ClientIP"})
    assert spec.affinity_timeout_seconds == 10800
    assert ProxyServiceSpec.from_dict({"ports": [{"port": 80}]}).affinity_timeout_seconds is None
