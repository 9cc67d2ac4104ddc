"""Finding and building the control-plane binaries, without building anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from kopflet.local import binaries
from kopflet.local.config import ClusterConfig

KUBERNETES_GOMOD = """module k8s.io/kubernetes

require (
\tk8s.io/api v0.0.0
\tgo.etcd.io/etcd/client/v3 v3.7.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tk8s.io/cri-api => ./staging/src/k8s.io/cri-api
)
"""


def test_every_staging_module_is_replaced_by_its_published_release() -> None:
    assert binaries.staging_replaces(KUBERNETES_GOMOD, "1.37.2") == [
        "replace k8s.io/api => k8s.io/api v0.37.2",
        "replace k8s.io/client-go => k8s.io/client-go v0.37.2",
        "replace k8s.io/cri-api => k8s.io/cri-api v0.37.2",
    ]


def test_version_flags_make_kubectl_report_the_release() -> None:
    flags = binaries.kube_ldflags("1.37.2")
    assert "-X k8s.io/component-base/version.gitVersion=v1.37.2" in flags
    assert "-X k8s.io/component-base/version.gitMajor=1" in flags
    assert "-X k8s.io/component-base/version.gitMinor=37" in flags


def _make_binaries(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in binaries.ALL_BINARIES:
        path = directory / name
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)


def test_a_directory_the_user_names_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _make_binaries(tmp_path / "mine")
    monkeypatch.setenv("KOPFLET_BIN_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    found = binaries.ensure_binaries(progress=lambda _m: None)
    assert found.kube_apiserver == tmp_path / "mine" / "kube-apiserver"
    assert found.etcd == tmp_path / "mine" / "etcd"


def test_kubebuilder_assets_are_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _make_binaries(tmp_path / "assets")
    monkeypatch.delenv("KOPFLET_BIN_DIR", raising=False)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path / "assets"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert binaries.ensure_binaries(progress=lambda _m: None).kubectl == (
        tmp_path / "assets" / "kubectl"
    )


def test_missing_go_is_a_clear_error_naming_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KOPFLET_BIN_DIR", raising=False)
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(binaries.BinariesError, match=r"install Go 1\.26") as error:
        binaries.ensure_binaries(progress=lambda _m: None)
    assert "KOPFLET_BIN_DIR" in str(error.value)


def test_clusters_of_different_index_share_no_name_port_or_subnet() -> None:
    a, b = ClusterConfig(name="a", index=0), ClusterConfig(name="b", index=1)
    assert a.bridge != b.bridge and a.bridge_network != b.bridge_network

    def ports(c: ClusterConfig) -> set[int]:
        return {
            c.etcd_client_port,
            c.etcd_peer_port,
            c.apiserver_port,
            c.controller_manager_port,
            c.controller_metrics_port,
            c.controller_health_port,
        }

    assert len(ports(a)) == 6 and ports(a).isdisjoint(ports(b))
    assert {n.netns for n in a.node_configs()}.isdisjoint(n.netns for n in b.node_configs())


def test_link_names_fit_the_kernel_limit() -> None:
    config = ClusterConfig(index=9, nodes=64)
    assert all(len(n.veth_host) <= 15 for n in config.node_configs())
    assert len(config.bridge) <= 15
