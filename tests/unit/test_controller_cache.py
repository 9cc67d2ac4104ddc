"""The in-memory indices and the typed cache over them; the template hash; the flags."""

from __future__ import annotations

from typing import Any

import pytest

from kopflet.api import InstanceTemplate
from kopflet.controller.cluster_cache import ClusterCache
from kopflet.controller.instance_state import ObjectKey
from kopflet.controller.object_index import index_lease
from kopflet.controller.options import duration, parse_options
from kopflet.controller.template_hash import instance_name, template_hash

pytestmark = pytest.mark.unit


def inst(
    name: str,
    *,
    node: str | None = None,
    owner: str | None = "wl-1",
    status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "uid": f"u-{name}"}
    if owner:
        meta["ownerReferences"] = [
            {
                "apiVersion": "kopflet.dev/v1alpha1",
                "kind": "Workload",
                "name": "web",
                "uid": owner,
                "controller": True,
            }
        ]
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "i"}]}
    if node:
        spec["nodeName"] = node
    body: dict[str, Any] = {"metadata": meta, "spec": spec}
    if status is not None:
        body["status"] = status
    return body


def test_instances_are_found_by_owner_node_namespace_and_binding() -> None:
    cache = ClusterCache.from_objects(
        instances=[
            inst("a", node="n1"),
            inst("b"),
            inst("c", node="n1", owner=None),
        ]
    )
    assert {i.metadata.name for i in cache.instances_owned_by("wl-1")} == {"a", "b"}
    assert {i.metadata.name for i in cache.instances_on("n1")} == {"a", "c"}
    assert [i.metadata.name for i in cache.unbound_instances()] == ["b"]
    assert len(cache.instances_in("ns")) == 3 and cache.instances_in("other") == []
    found = cache.instance(ObjectKey("ns", "a"))
    assert found is not None and found.spec.node_name == "n1"
    assert cache.instance(ObjectKey("ns", "zzz")) is None


def test_an_instance_whose_status_cannot_be_read_is_still_indexed() -> None:
    cache = ClusterCache.from_objects(instances=[inst("a", status={"phase": "Exploded"})])
    found = cache.instance(ObjectKey("ns", "a"))
    assert found is not None and found.status is None


def test_only_node_heartbeat_leases_are_indexed() -> None:
    heartbeat = {
        "metadata": {"name": "n1", "namespace": "kopflet-node-lease", "resourceVersion": "5"},
        "spec": {"renewTime": "t"},
    }
    other = {"metadata": {"name": "x", "namespace": "kube-system", "resourceVersion": "1"}}
    assert index_lease(other) is None
    cache = ClusterCache.from_objects(leases=[heartbeat, other])
    lease = cache.lease("n1")
    assert lease is not None and lease.resource_version == "5"


def template(env: str) -> InstanceTemplate:
    return InstanceTemplate.from_dict(
        {
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "containers": [{"name": "c", "image": "i", "env": [{"name": "V", "value": env}]}]
            },
        }
    )


def test_template_hash_is_stable_and_changes_with_the_template() -> None:
    assert template_hash(template("1")) == template_hash(template("1"))
    assert template_hash(template("1")) != template_hash(template("2"))
    assert len(template_hash(template("1"))) == 10


def test_instance_names_stay_dns_labels() -> None:
    name = instance_name("w" * 80, template_hash(template("1")), "abcde")
    assert len(name) <= 63 and name.endswith("-abcde")


def test_flags_take_durations_and_ranges() -> None:
    options = parse_options(
        [
            "--node-grace-period",
            "1m30s",
            "--eviction-timeout",
            "20",
            "--service-cidr",
            "10.100.0.0/24",
            "--no-leader-elect",
        ]
    )
    assert options.node_grace_period == 90 and options.eviction_timeout == 20
    assert options.service_pool.size == 254 and options.leader_elect is False
    assert duration("500ms") == 0.5
    with pytest.raises(SystemExit):
        parse_options(["--node-cidr-size", "8"])


def test_objects_deleted_behind_a_relist_are_forgotten_for_good() -> None:
    cache = ClusterCache.from_objects(instances=[inst("a"), inst("b", node="n1")])
    before = cache.uids("instances")
    forgotten = cache.forget_deleted({"u-a", "u-new"}, known_before=before)
    assert forgotten == 1
    assert [i.metadata.name for i in cache.all_instances()] == ["a"]
    assert cache.instance(ObjectKey("ns", "b")) is None and cache.instances_on("n1") == []
