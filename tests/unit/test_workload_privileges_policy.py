"""What a workload may get from its node only when the agent allows it: extra capabilities,
privileged mode, hostPath — and what it never gets: the container engine's socket."""

from __future__ import annotations

from pathlib import Path

import pytest

from kopflet.agent.options import parse_options
from kopflet.agent.runtime.container_config import (
    ContainerPolicy,
    capability_name,
    container_request,
)
from kopflet.agent.runtime.environment import ContainerConfigError
from kopflet.agent.runtime.labels import ContainerID, ContainerLabels, ContainerRole
from kopflet.agent.runtime.volumes import InstanceVolumes
from kopflet.api import UID, Container, Instance

pytestmark = pytest.mark.unit

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


def _request(security: dict[str, object], policy: ContainerPolicy) -> object:
    container = Container.from_dict({"name": "main", "image": "i:1", "securityContext": security})
    instance = Instance.from_dict(
        {
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "u-1"},
            "spec": {"containers": [container.to_dict()]},
        }
    )
    return container_request(
        instance=instance,
        container=container,
        labels=LABELS,
        sandbox_id=ContainerID("sb"),
        env={},
        volume_paths={},
        policy=policy,
    )


def test_capability_beyond_the_default_set_is_refused_unless_allowed() -> None:
    security = {"capabilities": {"add": ["NET_ADMIN", "SYS_TIME"]}}
    with pytest.raises(ContainerConfigError, match="NET_ADMIN, SYS_TIME are not allowed"):
        _request(security, ContainerPolicy())
    with pytest.raises(ContainerConfigError, match="SYS_TIME are not allowed"):
        _request(security, ContainerPolicy(allowed_capabilities=frozenset({"NET_ADMIN"})))
    allowed = _request(
        security, ContainerPolicy(allowed_capabilities=frozenset({"NET_ADMIN", "SYS_TIME"}))
    )
    assert allowed.cap_add == ("NET_ADMIN", "SYS_TIME")  # type: ignore[attr-defined]
    anything = _request(security, ContainerPolicy(allowed_capabilities=frozenset({"ALL"})))
    assert anything.cap_add == ("NET_ADMIN", "SYS_TIME")  # type: ignore[attr-defined]


def test_adding_a_default_capability_or_dropping_any_needs_no_permission() -> None:
    request = _request(
        {"capabilities": {"add": ["cap_net_bind_service", "chown"], "drop": ["ALL"]}},
        ContainerPolicy(),
    )
    assert request.cap_add == ("NET_BIND_SERVICE", "CHOWN")  # type: ignore[attr-defined]
    assert request.no_new_privileges is True  # type: ignore[attr-defined]


def test_adding_all_capabilities_is_refused_by_default() -> None:
    with pytest.raises(ContainerConfigError, match="ALL are not allowed"):
        _request({"capabilities": {"add": ["ALL"]}}, ContainerPolicy())


def test_capability_names_are_normalised() -> None:
    assert capability_name("cap_sys_admin") == "SYS_ADMIN"
    assert capability_name("Net_Admin") == "NET_ADMIN"


def test_agent_flags_allow_capabilities_by_name() -> None:
    options = parse_options(
        [
            "--node-name",
            "n",
            "--allow-capability",
            "net_admin",
            "--allow-capability",
            "CAP_SYS_TIME",
        ]
    )
    assert options.allowed_capabilities == frozenset({"NET_ADMIN", "SYS_TIME"})
    assert parse_options(["--node-name", "n"]).allowed_capabilities == frozenset()


def _host_path_instance(path: str) -> Instance:
    return Instance.from_dict(
        {
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "u-1"},
            "spec": {
                "containers": [{"name": "main", "image": "i:1"}],
                "volumes": [{"name": "h", "hostPath": {"path": path}}],
            },
        }
    )


class NoObjects:
    def config_map(self, namespace: str, name: str) -> None:
        return None

    def secret(self, namespace: str, name: str) -> None:
        return None


@pytest.mark.parametrize(
    "path",
    [
        "{socket}",
        "{socket_dir}",
        "{socket_dir}/../{socket_dir_name}",
        "/",
        "/var/run/docker.sock",
        "/var/run",
        "/run",
        "/run/containerd/containerd.sock",
    ],
)
def test_engine_socket_is_never_mounted_even_with_host_path_allowed(
    tmp_path: Path, path: str
) -> None:
    socket_dir = tmp_path / "engine"
    socket_dir.mkdir()
    socket = socket_dir / "docker.sock"
    socket.touch()
    volumes = InstanceVolumes(
        tmp_path / "volumes", allow_host_path=True, engine_sockets=(str(socket),)
    )
    asked = path.format(socket=socket, socket_dir=socket_dir, socket_dir_name=socket_dir.name)
    with pytest.raises(ContainerConfigError, match="container engine's socket"):
        volumes.prepare(_host_path_instance(asked), NoObjects())


def test_engine_socket_reached_through_a_symlink_is_refused(tmp_path: Path) -> None:
    socket = tmp_path / "engine" / "docker.sock"
    socket.parent.mkdir()
    socket.touch()
    link = tmp_path / "innocent"
    link.symlink_to(socket.parent)
    volumes = InstanceVolumes(
        tmp_path / "volumes", allow_host_path=True, engine_sockets=(str(socket),)
    )
    with pytest.raises(ContainerConfigError, match="container engine's socket"):
        volumes.prepare(_host_path_instance(str(link)), NoObjects())


def test_other_host_paths_are_mounted_when_allowed(tmp_path: Path) -> None:
    socket = tmp_path / "engine" / "docker.sock"
    data = tmp_path / "data"
    data.mkdir()
    volumes = InstanceVolumes(
        tmp_path / "volumes", allow_host_path=True, engine_sockets=(str(socket),)
    )
    assert volumes.prepare(_host_path_instance(str(data)), NoObjects()) == {"h": str(data)}
    refused = InstanceVolumes(tmp_path / "volumes", allow_host_path=False)
    with pytest.raises(ContainerConfigError, match="not allowed on this node"):
        refused.prepare(_host_path_instance(str(data)), NoObjects())
