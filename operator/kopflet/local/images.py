"""Images made without a registry: root filesystems built here, ``docker import``-ed into every
node's engine. An image is identified by its content digest (a label), so loading is idempotent."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import docker

CONTENT_LABEL = "dev.kopflet.image-content"


@dataclass(frozen=True)
class LocalImage:
    repository: str
    tag: str
    #: Builds the root filesystem as an uncompressed tar archive.
    build_rootfs: Callable[[], bytes]
    changes: tuple[str, ...] = ()
    #: Further tags of the same image.
    aliases: tuple[str, ...] = ()

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}"

    @property
    def references(self) -> tuple[str, ...]:
        return (self.reference, *(f"{self.repository}:{a}" for a in self.aliases))


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def _has_interpreter(path: str) -> bool:
    """True for a dynamically linked ELF (one with a PT_INTERP program header)."""
    with open(path, "rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:  # 64-bit ELF only
            return True
        phoff = int.from_bytes(header[32:40], "little")
        phentsize = int.from_bytes(header[54:56], "little")
        phnum = int.from_bytes(header[56:58], "little")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    pt_interp = 3
    return any(
        int.from_bytes(table[i * phentsize : i * phentsize + 4], "little") == pt_interp
        for i in range(phnum)
    )


def _busybox_path() -> str:
    path = shutil.which("busybox")
    if path is None:
        raise RuntimeError("busybox is not installed: install Debian's busybox-static package")
    if _has_interpreter(path):
        raise RuntimeError(f"{path} is dynamically linked: install Debian's busybox-static package")
    return path


def busybox_version() -> str:
    out = subprocess.run([_busybox_path()], capture_output=True, text=True, check=False).stdout
    # "BusyBox v1.35.0 (Debian 1:1.35.0-4+b3) multi-call binary."
    for word in out.split():
        if word.startswith("v") and word[1:2].isdigit():
            return word[1:]
    return "unknown"


def busybox_rootfs() -> bytes:
    """A root filesystem holding a static busybox: sh, httpd, nc, sleep and the rest."""
    busybox = _busybox_path()
    applets = subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in (
            "bin",
            "etc",
            "tmp",
            "www",
            "root",
            "proc",
            "sys",
            "dev",
            "var",
            "var/run",
        ):
            _add_dir(tar, directory, 0o1777 if directory == "tmp" else 0o755)
        with open(busybox, "rb") as f:
            _add_file(tar, "bin/busybox", f.read(), 0o755)
        for applet in sorted(set(applets) - {"busybox"}):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
        _add_file(
            tar,
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
        )
        _add_file(tar, "etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        _add_file(tar, "www/index.html", b"kopflet\n")
    return buffer.getvalue()


#: The tag examples and tests use: stable whatever busybox version the machine has, and not
#: ``latest`` (which would mean imagePullPolicy Always, and a pull no registry can serve).
BUSYBOX_IMAGE = "kopflet/busybox:local"


def busybox_image() -> LocalImage:
    return LocalImage(
        repository="kopflet/busybox",
        tag="local",
        aliases=(busybox_version(),),
        build_rootfs=busybox_rootfs,
        changes=('CMD ["sh"]', "ENV PATH=/bin"),
    )


def default_images() -> list[LocalImage]:
    """Images every node of the local cluster gets. Extend here for later images."""
    return [busybox_image()]


def load_image(client: docker.DockerClient, image: LocalImage, rootfs: bytes) -> str:
    """Import ``rootfs`` as ``image`` unless the engine already holds that very content."""
    digest = hashlib.sha256(rootfs).hexdigest()
    try:
        present = client.images.get(image.reference)
        if (present.labels or {}).get(CONTENT_LABEL) != digest:
            present = None
    except docker.errors.ImageNotFound:
        present = None
    if present is None:
        changes = [*image.changes, f"LABEL {CONTENT_LABEL}={digest}"]
        client.api.import_image_from_data(
            rootfs, repository=image.repository, tag=image.tag, changes=changes
        )
        present = client.images.get(image.reference)
    for alias in image.aliases:
        present.tag(image.repository, alias)
    return str(present.id)


def load_images(docker_hosts: Iterable[str], images: Iterable[LocalImage]) -> None:
    built = [(image, image.build_rootfs()) for image in images]
    for host in docker_hosts:
        client = docker.DockerClient(base_url=host, version="auto", timeout=60)
        try:
            for image, rootfs in built:
                load_image(client, image, rootfs)
        finally:
            client.close()
