"""The four CRDs, by the file name each has in crds/."""

from __future__ import annotations

from typing import Any

from kopflet.api.schema._instance_crd import instance_crd
from kopflet.api.schema._nodeagent import nodeagent_crd
from kopflet.api.schema._proxyservice import proxyservice_crd
from kopflet.api.schema._workload import workload_crd


def crd_manifests() -> dict[str, dict[str, Any]]:
    return {
        f"{crd['metadata']['name']}.yaml": crd
        for crd in (workload_crd(), instance_crd(), proxyservice_crd(), nodeagent_crd())
    }
