"""Build the kopflet image without a host engine or a registry: ``scripts/build-image --engine
own`` runs its ``docker build`` through here.

    python -m kopflet.local.image_build [--debian-base REF] -- COMMAND...

starts the build engine (:mod:`kopflet.local.build_engine`) and the mirror proxy, makes sure the
engine holds a Debian base image when asked (``debootstrap --variant=minbase`` on the host,
cached as a tarball, then ``docker import``: no registry is involved), and runs COMMAND with
``DOCKER_HOST`` pointing at the engine and ``http_proxy`` at the proxy. The engine stops
afterwards; its images stay for the next run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import docker

from kopflet.local.build_engine import BuildEngine, BuildEngineConfig, BuildEngineError
from kopflet.local.config import cache_dir
from kopflet.local.mirror_proxy import mirror_proxy

DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SUITE = "bookworm"
DEBIAN_BASE = f"kopflet/debian-base:{DEBIAN_SUITE}"
_DEBOOTSTRAP_TIMEOUT = 900


class BaseImageError(RuntimeError):
    pass


def debian_rootfs(*, suite: str, mirror: str) -> Path:
    """A tarball of ``debootstrap --variant=minbase``, made once and cached."""
    tarball = cache_dir() / "debian-base" / f"{suite}-minbase.tar"
    if tarball.exists():
        return tarball
    if shutil.which("debootstrap") is None:
        raise BaseImageError("debootstrap is not installed (apt-get install debootstrap)")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="debootstrap-", dir=tarball.parent) as work:
        root = Path(work) / "root"
        print(f"kopflet: debootstrap {suite} from {mirror} (once; cached)", file=sys.stderr)
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", suite, str(root), mirror],
            capture_output=True,
            text=True,
            timeout=_DEBOOTSTRAP_TIMEOUT,
            check=False,
        )
        if proc.returncode != 0:
            raise BaseImageError(f"debootstrap failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        partial = tarball.with_suffix(".partial")
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."], check=True
        )
        partial.rename(tarball)
    return tarball


def ensure_debian_base(
    client: docker.DockerClient,
    *,
    reference: str = DEBIAN_BASE,
    suite: str = DEBIAN_SUITE,
    mirror: str = DEBIAN_MIRROR,
) -> str:
    """The engine's image ``reference``, imported from the Debian tarball unless present."""
    try:
        return str(client.images.get(reference).id)
    except docker.errors.ImageNotFound:
        pass
    tarball = debian_rootfs(suite=suite, mirror=mirror)
    repository, _, tag = reference.rpartition(":")
    client.api.import_image_from_file(
        str(tarball), repository=repository, tag=tag, changes=['CMD ["bash"]']
    )
    return str(client.images.get(reference).id)


def run_with_engine(
    command: Sequence[str], *, debian_base: str | None, mirror: str = DEBIAN_MIRROR
) -> int:
    engine = BuildEngine()
    config: BuildEngineConfig = engine.config
    mirror_host = urllib.parse.urlsplit(mirror).hostname or "deb.debian.org"
    with (
        engine.running(),
        mirror_proxy(
            host=config.host_address,
            port=config.proxy_port,
            allowed_hosts=frozenset({mirror_host}),
        ) as proxy_url,
    ):
        if debian_base:
            client = engine.client()
            try:
                ensure_debian_base(client, reference=debian_base, mirror=mirror)
            finally:
                client.close()
        env = {**os.environ, "DOCKER_HOST": config.docker_host, "http_proxy": proxy_url}
        returncode = subprocess.run(list(command), env=env, check=False).returncode
        # Each build leaves the image it replaced, and the finished stages nothing builds on,
        # untagged: the engine's disk would only grow.
        client = engine.client()
        try:
            client.images.prune(filters={"dangling": True})
        finally:
            client.close()
        return returncode


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kopflet.local.image_build",
        description="Run COMMAND against kopflet's own build engine (see scripts/build-image).",
    )
    parser.add_argument(
        "--debian-base",
        metavar="REF",
        help=f"make sure the engine holds this Debian base image (e.g. {DEBIAN_BASE})",
    )
    parser.add_argument("--mirror", default=DEBIAN_MIRROR, help="Debian mirror (%(default)s)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND...")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no COMMAND given")
    try:
        return run_with_engine(command, debian_base=args.debian_base, mirror=args.mirror)
    except (BuildEngineError, BaseImageError) as error:
        print(f"kopflet: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
