"""``kopflet load-image``: an image of a local engine, or a ``docker save`` archive, lands in
every node engine of the running local cluster with the same ID; loading again changes nothing."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from conftest import TEST_CLUSTER, TestCluster
from kopflet.local import images as local_images
from kopflet.local.build_engine import BuildEngine
from kopflet.local.load_image import archive_images


@dataclass(frozen=True)
class SourceImage:
    reference: str
    image_id: str
    #: the same image saved under a second reference
    tarball: Path
    tarball_reference: str


def _load_image(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kopflet", "load-image", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _cluster_args() -> list[str]:
    return ["--name", TEST_CLUSTER.name, "--index", str(TEST_CLUSTER.index)]


@pytest.fixture(scope="module")
def source_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SourceImage]:
    """A small image in kopflet's build engine (where scripts/build-image leaves images),
    and the same image as an archive under another name. The engine is stopped while the
    tests run: ``--from-build-engine`` starts it itself."""
    tag = uuid.uuid4().hex[:10]
    reference = f"kopflet/load-image-test:{tag}"
    archived = f"kopflet/load-image-archive:{tag}"
    tarball = tmp_path_factory.mktemp("load-image") / "image.tar"
    with BuildEngine().running() as engine:
        client = engine.client()
        try:
            client.api.import_image_from_data(
                local_images.busybox_rootfs(),
                repository="kopflet/load-image-test",
                tag=tag,
                changes=['CMD ["sh"]', "ENV PATH=/bin", f"LABEL test={tag}"],
            )
            image = client.images.get(reference)
            image.tag(archived)
            with open(tarball, "wb") as out:
                for chunk in client.api.get_image(archived):
                    out.write(chunk)
            client.images.remove(archived)
        finally:
            client.close()
    yield SourceImage(
        reference=reference, image_id=str(image.id), tarball=tarball, tarball_reference=archived
    )
    with BuildEngine().running() as engine:
        client = engine.client()
        with contextlib.suppress(docker.errors.DockerException):
            client.images.remove(str(image.id), force=True)
        client.close()


def _node_image_ids(cluster: TestCluster, reference: str) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for node in cluster.nodes:
        client = cluster.docker(node)
        try:
            found[node.name] = str(client.images.get(reference).id)
        except docker.errors.ImageNotFound:
            found[node.name] = None
        finally:
            client.close()
    return found


@pytest.fixture
def clean_nodes(cluster: TestCluster, source_image: SourceImage) -> Iterator[None]:
    yield
    for node in cluster.nodes:
        client = cluster.docker(node)
        with contextlib.suppress(docker.errors.DockerException):
            client.images.remove(source_image.image_id, force=True)
        client.close()


@pytest.mark.usefixtures("clean_nodes")
def test_image_from_the_build_engine_lands_in_every_node_once(
    cluster: TestCluster, source_image: SourceImage
) -> None:
    assert set(_node_image_ids(cluster, source_image.reference).values()) == {None}

    first = _load_image("--from-build-engine", source_image.reference, *_cluster_args())
    assert first.returncode == 0, first.stderr
    assert sorted(first.stdout.splitlines()) == [
        f"{node.name}: loaded {source_image.reference}" for node in cluster.nodes
    ]
    assert set(_node_image_ids(cluster, source_image.reference).values()) == {source_image.image_id}

    again = _load_image("--from-build-engine", source_image.reference, *_cluster_args())
    assert again.returncode == 0, again.stderr
    assert sorted(again.stdout.splitlines()) == [
        f"{node.name}: {source_image.reference} already present" for node in cluster.nodes
    ]


@pytest.mark.usefixtures("clean_nodes")
def test_archive_lands_in_the_engines_named(
    cluster: TestCluster, source_image: SourceImage
) -> None:
    first, *others = cluster.nodes
    loaded = _load_image(
        "--from-tarball", str(source_image.tarball), "--into-engine", first.docker_host
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == (
        f"{first.docker_host}: loaded {source_image.tarball_reference}"
    )
    ids = _node_image_ids(cluster, source_image.tarball_reference)
    assert ids[first.name] == source_image.image_id
    assert all(ids[node.name] is None for node in others)


def test_busybox_image_is_made_here_and_matches_what_the_cluster_loaded(
    cluster: TestCluster,
) -> None:
    node = cluster.nodes[0]
    before = _node_image_ids(cluster, local_images.busybox_image().reference)[node.name]
    loaded = _load_image("--busybox", "--into-engine", node.docker_host)
    assert loaded.returncode == 0, loaded.stderr
    # Same static busybox, same content digest: the image `kopflet up` loaded stays as it is.
    assert before is not None and before[:19] in loaded.stdout
    assert loaded.stdout.startswith(f"{node.docker_host}: kopflet/busybox:")


def test_missing_image_fails_before_any_node_is_touched(cluster: TestCluster) -> None:
    missing = f"kopflet/no-such-image:{uuid.uuid4().hex[:8]}"
    proc = _load_image("--from-build-engine", missing, *_cluster_args())
    assert proc.returncode == 1
    assert f"image {missing} is not in the source engine" in proc.stderr
    assert proc.stdout == ""


def test_a_cluster_that_is_not_running_is_named_in_the_error() -> None:
    proc = _load_image("--busybox", "--name", "no-such-cluster", "--index", "9")
    assert proc.returncode == 1
    assert "the local cluster no-such-cluster is not running" in proc.stderr


@pytest.mark.parametrize(
    "config_path",
    [
        "0123abcd.json",  # the classic layout of `docker save`
        "blobs/sha256/0123abcd",  # the OCI layout newer engines write
    ],
)
def test_archive_image_ids_are_read_from_either_layout(tmp_path: Path, config_path: str) -> None:
    manifest = json.dumps([{"Config": config_path, "RepoTags": ["kopflet/x:1", "kopflet/x:2"]}])
    archive = tmp_path / "image.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest.encode()))
    assert archive_images(archive) == {"sha256:0123abcd": ("kopflet/x:1", "kopflet/x:2")}
