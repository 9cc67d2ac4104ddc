"""The CRD files: rendered from kopflet.api.schema, structural, described, bounded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kopflet.api import constants
from kopflet.api.schema import crd_manifests, render_crd_yaml

CRDS = Path(__file__).resolve().parents[2] / "crds"
GENERATED = crd_manifests()


def _schema_of(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def test_one_file_per_kind_and_nothing_else() -> None:
    # Beside the CRDs only the kustomization that lists them for `kubectl apply -k`.
    on_disk = sorted(p.name for p in CRDS.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(GENERATED) == on_disk
    listed = yaml.safe_load((CRDS / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(GENERATED)
    assert sorted(GENERATED) == [
        "instances.kopflet.dev.yaml",
        "nodeagents.kopflet.dev.yaml",
        "proxyservices.kopflet.dev.yaml",
        "workloads.kopflet.dev.yaml",
    ]


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_crd_file_is_what_the_schema_renders(name: str) -> None:
    on_disk = (CRDS / name).read_text()
    assert yaml.safe_load(on_disk) == GENERATED[name], "run: python crds/generate.py"
    assert on_disk == render_crd_yaml(GENERATED[name])


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_every_field_is_typed_and_described(name: str) -> None:
    for path, node in _walk(_schema_of(GENERATED[name])):
        if path in {".metadata", ".apiVersion", ".kind"}:
            continue
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        # kubectl explain shows the items of a list and the values of a map under the
        # field itself, so only those may go without a description of their own.
        if not path.endswith(("[]", "{}")):
            assert node.get("description"), f"{name}: {path} has no description"
        assert not node.get("x-kubernetes-preserve-unknown-fields"), path


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_every_list_and_string_is_bounded(name: str) -> None:
    # Unbounded lists or strings make the API server's CEL cost estimate explode.
    for path, node in _walk(_schema_of(GENERATED[name])):
        if path in {".apiVersion", ".kind"}:
            continue
        if node.get("type") == "array":
            assert "maxItems" in node, path
        if node.get("type") == "string" and "enum" not in node:
            assert "maxLength" in node, path


def test_names_scope_and_subresources() -> None:
    expected = {
        "workloads": ("Workload", "wl", "Namespaced"),
        "instances": ("Instance", "inst", "Namespaced"),
        "proxyservices": ("ProxyService", "psvc", "Namespaced"),
        "nodeagents": ("NodeAgent", "na", "Cluster"),
    }
    for crd in GENERATED.values():
        spec = crd["spec"]
        kind, short, scope = expected[spec["names"]["plural"]]
        assert spec["group"] == constants.GROUP
        assert spec["names"]["kind"] == kind
        assert spec["names"]["shortNames"] == [short]
        assert spec["names"]["categories"] == [constants.CATEGORY]
        assert spec["scope"] == scope
        version = spec["versions"][0]
        assert version["name"] == constants.VERSION
        assert "status" in version["subresources"]
        assert version["additionalPrinterColumns"][-1]["name"] == "Age"


def test_workload_scales_and_instance_is_selectable_by_node() -> None:
    workload = GENERATED["workloads.kopflet.dev.yaml"]["spec"]["versions"][0]
    assert workload["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    instance = GENERATED["instances.kopflet.dev.yaml"]["spec"]["versions"][0]
    assert instance["selectableFields"] == [{"jsonPath": "." + constants.INSTANCE_NODE_NAME_FIELD}]


def test_core_defaults_are_schema_defaults() -> None:
    workload = _schema_of(GENERATED["workloads.kopflet.dev.yaml"])["properties"]["spec"]
    props = workload["properties"]
    assert props["replicas"]["default"] == 1
    assert props["strategy"]["default"]["rollingUpdate"] == {
        "maxSurge": "25%",
        "maxUnavailable": "25%",
    }
    instance = props["template"]["properties"]["spec"]["properties"]
    assert instance["restartPolicy"]["default"] == "Always"
    assert instance["terminationGracePeriodSeconds"]["default"] == 30
    container = instance["containers"]["items"]["properties"]
    assert "default" not in container["imagePullPolicy"], "resolved by the core rule, not here"
    probe = container["livenessProbe"]["properties"]
    assert {
        k: probe[k]["default"]
        for k in (
            "initialDelaySeconds",
            "timeoutSeconds",
            "periodSeconds",
            "successThreshold",
            "failureThreshold",
        )
    } == {
        "initialDelaySeconds": 0,
        "timeoutSeconds": 1,
        "periodSeconds": 10,
        "successThreshold": 1,
        "failureThreshold": 3,
    }
    assert container["ports"]["items"]["properties"]["protocol"]["default"] == "TCP"
    service = _schema_of(GENERATED["proxyservices.kopflet.dev.yaml"])["properties"]["spec"]
    assert service["properties"]["sessionAffinity"]["default"] == "None"
    assert service["properties"]["type"]["default"] == "ClusterIP"
    assert service["properties"]["ports"]["items"]["properties"]["protocol"]["default"] == "TCP"
