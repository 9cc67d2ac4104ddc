"""The CustomResourceDefinition around a kind's schema: names, subresources, columns."""

from __future__ import annotations

from typing import Any

from kopflet.api.constants import CATEGORY, GROUP, VERSION
from kopflet.api.schema._builders import Schema, obj

_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def column(name: str, kind: str, path: str, description: str, *, priority: int = 0) -> Schema:
    out: Schema = {"name": name, "type": kind, "jsonPath": path, "description": description}
    if priority:
        out["priority"] = priority
    return out


def crd(
    *,
    kind: str,
    plural: str,
    short: str,
    scope: str,
    description: str,
    spec: Schema,
    status: Schema,
    columns: list[Schema],
    scale: bool = False,
    selectable: list[str] | None = None,
    spec_required: bool = True,
) -> dict[str, Any]:
    subresources: Schema = {"status": {}}
    if scale:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    version: Schema = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {
            "openAPIV3Schema": obj(
                description,
                {
                    "apiVersion": {"type": "string", "description": "kopflet.dev/v1alpha1"},
                    "kind": {"type": "string", "description": kind},
                    "metadata": {"type": "object"},
                    "spec": spec,
                    "status": status,
                },
                required=["spec"] if spec_required else (),
            )
        },
        "subresources": subresources,
        "additionalPrinterColumns": [*columns, _AGE],
    }
    if selectable:
        version["selectableFields"] = [{"jsonPath": path} for path in selectable]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": [CATEGORY],
            },
            "scope": scope,
            "versions": [version],
        },
    }
