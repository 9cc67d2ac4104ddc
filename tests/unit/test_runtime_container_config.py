"""Translation of spec containers into engine requests: env, limits, security, mounts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from kopflet.agent.runtime.container_config import ContainerPolicy, container_request
from kopflet.agent.runtime.container_runtime import ContainerRequest, Mount
from kopflet.agent.runtime.environment import (
    ContainerConfigError,
    InstanceFacts,
    expand,
    resolve_env,
)
from kopflet.agent.runtime.labels import ContainerID, ContainerLabels, ContainerRole
from kopflet.api import UID, Container, Instance

pytestmark = pytest.mark.unit


class Objects:
    def __init__(
        self,
        config_maps: Mapping[str, Mapping[str, bytes]] | None = None,
        secrets: Mapping[str, Mapping[str, bytes]] | None = None,
    ) -> None:
        self.config_maps = dict(config_maps or {})
        self.secrets = dict(secrets or {})

    def config_map(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        return self.config_maps.get(f"{namespace}/{name}")

    def secret(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        return self.secrets.get(f"{namespace}/{name}")


FACTS = InstanceFacts(
    name="web-0",
    namespace="shop",
    uid=UID("u-1"),
    node_name="node-a",
    instance_ip="10.244.1.7",
    host_ip="192.168.50.2",
    labels={"app": "web"},
)
LABELS = ContainerLabels(
    role=ContainerRole.APP,
    node="node-a",
    instance_uid=UID("u-1"),
    instance_name="web-0",
    instance_namespace="shop",
    container_name="main",
    spec_hash="h",
    restart_count=0,
    grace_period_seconds=30,
)


def container(**fields: Any) -> Container:
    return Container.from_dict({"name": "main", "image": "kopflet/busybox:test", **fields})


def request_for(
    c: Container,
    *,
    volumes: list[dict[str, Any]] | None = None,
    paths: Mapping[str, str] | None = None,
    policy: ContainerPolicy | None = None,
    env: Mapping[str, str] | None = None,
    image_user: str = "",
) -> ContainerRequest:
    inst = Instance.from_dict(
        {
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "u-1"},
            "spec": {"containers": [c.to_dict()], "volumes": volumes or []},
        }
    )
    return container_request(
        instance=inst,
        container=c,
        labels=LABELS,
        sandbox_id=ContainerID("sb"),
        env=env or {},
        volume_paths=paths or {},
        policy=policy or ContainerPolicy(),
        image_user=image_user,
    )


def test_env_sources_resolve_in_core_order_with_env_overriding_env_from() -> None:
    objects = Objects(
        config_maps={"shop/cfg": {"MODE": b"fast", "LEVEL": b"3", "bad key": b"x"}},
        secrets={"shop/creds": {"password": b"s3cret"}},
    )
    c = container(
        envFrom=[
            {"configMapRef": {"name": "cfg"}},
            {"prefix": "S_", "secretRef": {"name": "creds"}},
        ],
        env=[
            {"name": "MODE", "value": "slow"},
            {"name": "LVL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "LEVEL"}}},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
            {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.instanceIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "URL", "value": "http://$(IP):80/$(NOPE)$$"},
        ],
    )
    env = resolve_env(c, resolver=objects, facts=FACTS)
    assert env == {
        "MODE": "slow",
        "LEVEL": "3",
        "S_password": "s3cret",
        "LVL": "3",
        "PW": "s3cret",
        "ME": "web-0",
        "NS": "shop",
        "IP": "10.244.1.7",
        "NODE": "node-a",
        "APP": "web",
        "URL": "http://10.244.1.7:80/$(NOPE)$",
    }


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "missing"}}},
            "couldn't find key missing in ConfigMap shop/cfg",
        ),
        (
            {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k"}}},
            'configmap "absent" not found',
        ),
        (
            {"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}},
            'secret "absent" not found',
        ),
    ],
)
def test_missing_reference_is_a_create_container_config_error(
    env: dict[str, Any], message: str
) -> None:
    objects = Objects(config_maps={"shop/cfg": {"present": b"1"}})
    with pytest.raises(ContainerConfigError, match=message) as caught:
        resolve_env(container(env=[env]), resolver=objects, facts=FACTS)
    assert caught.value.reason == "CreateContainerConfigError"


def test_optional_missing_references_are_skipped() -> None:
    c = container(
        env=[
            {
                "name": "X",
                "valueFrom": {"configMapKeyRef": {"name": "a", "key": "k", "optional": True}},
            }
        ],
        envFrom=[{"secretRef": {"name": "b", "optional": True}}],
    )
    assert resolve_env(c, resolver=Objects(), facts=FACTS) == {}


def test_dollar_expansion_follows_the_core_rules() -> None:
    assert expand("$(A)-$(B)-$$(A)-$(", {"A": "1"}) == "1-$(B)-$(A)-$("


def test_command_and_args_replace_entrypoint_and_cmd_with_expansion() -> None:
    c = container(command=["sh", "-c"], args=["echo $(GREETING)"], workingDir="/tmp")
    req = request_for(c, env={"GREETING": "hi"})
    assert req.entrypoint == ("sh", "-c")
    assert req.args == ("echo hi",)
    assert req.working_dir == "/tmp"
    assert req.env == (("GREETING", "hi"),)


def test_no_command_keeps_the_image_entrypoint() -> None:
    req = request_for(container())
    assert req.entrypoint is None and req.args is None


def test_limits_become_docker_limits_and_requests_are_ignored() -> None:
    c = container(resources={"limits": {"cpu": "250m", "memory": "64Mi"}, "requests": {"cpu": "2"}})
    req = request_for(c)
    assert req.nano_cpus == 250_000_000
    assert req.memory_bytes == 64 * 1024 * 1024


def test_no_new_privileges_is_the_default() -> None:
    assert request_for(container()).no_new_privileges is True
    escalating = container(securityContext={"allowPrivilegeEscalation": True})
    assert request_for(escalating).no_new_privileges is False


def test_security_context_subset_is_translated() -> None:
    c = container(
        securityContext={
            "runAsUser": 1000,
            "runAsGroup": 2000,
            "readOnlyRootFilesystem": True,
            "capabilities": {"add": ["net_admin"], "drop": ["ALL"]},
        }
    )
    req = request_for(c, policy=ContainerPolicy(allowed_capabilities=frozenset({"NET_ADMIN"})))
    assert (req.user, req.read_only_rootfs, req.cap_add, req.cap_drop) == (
        "1000:2000",
        True,
        ("NET_ADMIN",),
        ("ALL",),
    )


def test_privileged_needs_the_agent_to_allow_it() -> None:
    c = container(securityContext={"privileged": True})
    with pytest.raises(ContainerConfigError, match="privileged"):
        request_for(c)
    req = request_for(c, policy=ContainerPolicy(allow_privileged=True))
    assert req.privileged and not req.no_new_privileges


@pytest.mark.parametrize(("run_as", "image_user"), [(0, ""), (None, ""), (None, "root")])
def test_run_as_non_root_refuses_root(run_as: int | None, image_user: str) -> None:
    ctx: dict[str, Any] = {"runAsNonRoot": True}
    if run_as is not None:
        ctx["runAsUser"] = run_as
    with pytest.raises(ContainerConfigError, match=r"root"):
        request_for(container(securityContext=ctx), image_user=image_user)


def test_run_as_non_root_accepts_a_numeric_non_root_image_user() -> None:
    c = container(securityContext={"runAsNonRoot": True})
    assert request_for(c, image_user="1000").user is None


def test_volume_mounts_bind_prepared_directories_and_projected_ones_read_only() -> None:
    c = container(
        volumeMounts=[
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "cfg", "mountPath": "/etc/app"},
            {"name": "scratch", "mountPath": "/logs", "subPath": "logs", "readOnly": True},
        ]
    )
    req = request_for(
        c,
        volumes=[{"name": "scratch", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "c"}}],
        paths={"scratch": "/v/u-1/scratch", "cfg": "/v/u-1/cfg"},
    )
    assert req.mounts == (
        Mount(source="/v/u-1/scratch", target="/scratch", read_only=False),
        Mount(source="/v/u-1/cfg", target="/etc/app", read_only=True),
        Mount(source="/v/u-1/scratch/logs", target="/logs", read_only=True),
    )
