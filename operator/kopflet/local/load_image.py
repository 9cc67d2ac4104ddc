"""``kopflet load-image``: put local images into every node's engine — what ``kind load
docker-image`` does for pods, without a registry.

    kopflet load-image IMAGE...            from your Docker engine ($DOCKER_HOST or its socket)
    kopflet load-image --from-tarball FILE a `docker save` archive
    kopflet load-image --from-build-engine IMAGE...
                                           from kopflet's own build engine (scripts/build-image)
    kopflet load-image --busybox           the busybox test image, made from this machine's
                                           static busybox (what `kopflet up` loads)

The targets are the engines of every node of the running local cluster (``--name``/``--index``
as for ``kopflet up``), or the engines given with ``--into-engine``. An engine that already holds
the very same image (same ID) is left alone, so loading twice costs nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import docker

from kopflet.local import cluster as local_cluster
from kopflet.local import images as local_images
from kopflet.local.build_engine import BuildEngine, BuildEngineError
from kopflet.local.config import ClusterConfig, cluster_index

DEFAULT_SOURCE = "unix:///var/run/docker.sock"
_CLIENT_TIMEOUT = 600


class LoadImageError(RuntimeError):
    pass


@dataclass(frozen=True)
class Target:
    #: what the report calls it: a node name, or the engine's address
    name: str
    docker_host: str


@dataclass(frozen=True)
class Archive:
    """A ``docker save`` archive and what it holds: image ID -> its references."""

    path: Path
    images: Mapping[str, tuple[str, ...]]


def _client(docker_host: str) -> docker.DockerClient:
    return docker.DockerClient(base_url=docker_host, version="auto", timeout=_CLIENT_TIMEOUT)


def archive_images(path: Path) -> dict[str, tuple[str, ...]]:
    """Image IDs and references in a ``docker save`` archive, from its ``manifest.json``.

    An image's ID is the digest of its config: ``<hex>.json`` in the classic layout,
    ``blobs/sha256/<hex>`` in the OCI layout that newer engines write."""
    try:
        with tarfile.open(path) as tar:
            member = tar.extractfile("manifest.json")
            if member is None:
                raise KeyError("manifest.json")
            manifest = json.load(member)
    except (OSError, KeyError, tarfile.TarError, ValueError) as error:
        raise LoadImageError(f"{path} is not a `docker save` archive: {error}") from error
    found: dict[str, tuple[str, ...]] = {}
    for entry in manifest:
        digest = Path(str(entry["Config"])).name.removesuffix(".json")
        found[f"sha256:{digest}"] = tuple(entry.get("RepoTags") or ())
    return found


def save_image(source: docker.DockerClient, reference: str, directory: Path) -> Archive:
    try:
        image = source.images.get(reference)
    except docker.errors.ImageNotFound:
        raise LoadImageError(f"image {reference} is not in the source engine") from None
    path = directory / f"image-{len(list(directory.iterdir()))}.tar"
    with open(path, "wb") as out:
        for chunk in source.api.get_image(reference, chunk_size=1 << 20):
            out.write(chunk)
    archive = Archive(path=path, images=archive_images(path))
    if str(image.id) not in archive.images:
        raise LoadImageError(f"the source engine saved {reference} as something else")
    return archive


def holds(client: docker.DockerClient, images: Mapping[str, tuple[str, ...]]) -> bool:
    """Whether the engine has every image under every one of its references."""
    for image_id, references in images.items():
        for name in references or (image_id,):
            try:
                if client.images.get(name).id != image_id:
                    return False
            except docker.errors.ImageNotFound:
                return False
    return True


def load_archive(target: Target, archive: Archive) -> str:
    """Load ``archive`` into one engine unless it holds all of it already; one report line."""
    names = ", ".join(
        ", ".join(refs) if refs else image_id[:19] for image_id, refs in archive.images.items()
    )
    client = _client(target.docker_host)
    try:
        if holds(client, archive.images):
            return f"{target.name}: {names} already present"
        with open(archive.path, "rb") as data:
            client.images.load(data)
        if not holds(client, archive.images):
            raise LoadImageError(f"{target.name}: the engine did not load {names}")
        return f"{target.name}: loaded {names}"
    finally:
        client.close()


def load_busybox(target: Target) -> str:
    image = local_images.busybox_image()
    client = _client(target.docker_host)
    try:
        image_id = local_images.load_image(client, image, image.build_rootfs())
    finally:
        client.close()
    return f"{target.name}: {image.reference} ({image_id[:19]})"


def local_cluster_targets(config: ClusterConfig) -> list[Target]:
    """The engine of every node of the running local cluster."""
    current = local_cluster.status(config)
    if current is None:
        raise LoadImageError(
            f"the local cluster {config.name} is not running (start it with `kopflet up`), "
            "or name engines with --into-engine"
        )
    node_names = sorted(
        {c.node for c in current.components if c.name == "dockerd" and c.node},
        key=lambda name: int(name.rsplit("-", 1)[-1]),
    )
    if not node_names:
        raise LoadImageError(f"the local cluster {config.name} has no node engines")
    return [
        Target(name=n, docker_host=config.node(int(n.rsplit("-", 1)[-1])).docker_host)
        for n in node_names
    ]


def copy_image(
    source: docker.DockerClient, reference: str, *, targets: Sequence[Target], work_dir: Path
) -> list[str]:
    """Copy one image into the targets that lack it; saved from the source only if one does."""
    try:
        wanted = {str(source.images.get(reference).id): (reference,)}
    except docker.errors.ImageNotFound:
        raise LoadImageError(f"image {reference} is not in the source engine") from None
    lines: list[str] = []
    lacking: list[Target] = []
    for target in targets:
        client = _client(target.docker_host)
        try:
            if holds(client, wanted):
                lines.append(f"{target.name}: {reference} already present")
            else:
                lacking.append(target)
        finally:
            client.close()
    if lacking:
        archive = save_image(source, reference, work_dir)
        lines += [load_archive(target, archive) for target in lacking]
    return lines


@contextlib.contextmanager
def _source_engine(args: argparse.Namespace) -> Iterator[docker.DockerClient]:
    with contextlib.ExitStack() as stack:
        if args.from_build_engine:
            engine = stack.enter_context(BuildEngine().running())
            client = engine.client(timeout=_CLIENT_TIMEOUT)
        else:
            client = _client(args.from_engine or os.environ.get("DOCKER_HOST") or DEFAULT_SOURCE)
        stack.callback(client.close)
        yield client


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kopflet load-image",
        description="Put local images into every node's engine (no registry needed).",
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image references to copy")
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--from-engine",
        metavar="URL",
        help="the engine holding IMAGE (default: $DOCKER_HOST, else the default socket)",
    )
    source.add_argument(
        "--from-build-engine",
        action="store_true",
        help="take IMAGE from kopflet's own build engine (scripts/build-image --engine own)",
    )
    source.add_argument("--from-tarball", metavar="FILE", help="a `docker save` archive")
    source.add_argument(
        "--busybox",
        action="store_true",
        help="the busybox test image, made from this machine's static busybox",
    )
    p.add_argument(
        "--into-engine",
        metavar="URL",
        action="append",
        default=[],
        help="load into this engine instead of the local cluster's nodes (repeatable)",
    )
    p.add_argument("--name", default="kopflet", help="local cluster name (default: %(default)s)")
    p.add_argument(
        "--index",
        type=int,
        default=None,
        help="local cluster index (default: the one the cluster was started with, else 0)",
    )
    p.add_argument("--state-root", default="/var/lib/kopflet", help=argparse.SUPPRESS)
    p.add_argument("--run-root", default="/run/kopflet", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    if args.busybox or args.from_tarball:
        if args.images:
            parser.error("IMAGE goes with --from-engine or --from-build-engine only")
    elif not args.images:
        parser.error("name at least one IMAGE (or use --from-tarball / --busybox)")
    try:
        if args.into_engine:
            targets = [Target(name=url, docker_host=url) for url in args.into_engine]
        else:
            config = ClusterConfig(
                name=args.name,
                index=cluster_index(Path(args.state_root), args.name, args.index),
                state_root=Path(args.state_root),
                run_root=Path(args.run_root),
            )
            targets = local_cluster_targets(config)
        if args.busybox:
            for target in targets:
                print(load_busybox(target))
            return 0
        if args.from_tarball:
            path = Path(args.from_tarball)
            archive = Archive(path=path, images=archive_images(path))
            for target in targets:
                print(load_archive(target, archive))
            return 0
        with (
            _source_engine(args) as source,
            tempfile.TemporaryDirectory(prefix="kopflet-load-image-") as work_dir,
        ):
            for reference in args.images:
                for line in copy_image(source, reference, targets=targets, work_dir=Path(work_dir)):
                    print(line)
    except (LoadImageError, BuildEngineError) as error:
        print(f"kopflet load-image: {error}", file=sys.stderr)
        return 1
    except docker.errors.DockerException as error:
        print(f"kopflet load-image: {error}", file=sys.stderr)
        return 1
    return 0
