"""The control-plane binaries: found where the user put them, or built from their Go modules.

Lookup, per binary: ``$KOPFLET_BIN_DIR``, ``$KUBEBUILDER_ASSETS``, our cache, then ``PATH`` (only a
binary that reports the pinned minor release). What is still missing is built with ``go`` from the
module proxy and cached per version, so only the first run pays for the build.

``go install k8s.io/kubernetes/cmd/...@vX`` refuses to work because k8s.io/kubernetes replaces its
staging modules with local directories; a wrapper module that requires k8s.io/kubernetes and maps
every ``k8s.io/<staging>`` module to its published ``v0.<minor>.<patch>`` release builds the same
code. etcd's server module is wrapped the same way with a two-line ``main``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kopflet.local.config import cache_dir

KUBERNETES_VERSION = "1.37.2"
ETCD_VERSION = "3.7.3"

KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kubectl")
ALL_BINARIES = ("etcd", *KUBE_COMMANDS)

Progress = Callable[[str], None]


class BinariesError(RuntimeError):
    """The binaries can be neither found nor built; the message says what to install."""


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path


def _print_progress(message: str) -> None:
    print(f"kopflet: {message}", file=sys.stderr, flush=True)


def kube_cache_dir() -> Path:
    return cache_dir() / f"kubernetes-v{KUBERNETES_VERSION}"


def etcd_cache_dir() -> Path:
    return cache_dir() / f"etcd-v{ETCD_VERSION}"


def _expected_version(name: str) -> str:
    return ETCD_VERSION if name == "etcd" else KUBERNETES_VERSION


def _reports_pinned_minor(path: Path, name: str) -> bool:
    args = {"etcd": ["--version"], "kubectl": ["version", "--client"]}.get(name, ["--version"])
    try:
        out = subprocess.run(
            [str(path), *args], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    major_minor = ".".join(_expected_version(name).split(".")[:2])
    return re.search(rf"v?{re.escape(major_minor)}\.\d+", out) is not None


def _find(name: str) -> Path | None:
    for var in ("KOPFLET_BIN_DIR", "KUBEBUILDER_ASSETS"):
        directory = os.environ.get(var)
        if directory and (Path(directory) / name).is_file():
            return Path(directory) / name
    cached = (etcd_cache_dir() if name == "etcd" else kube_cache_dir()) / "bin" / name
    if cached.is_file():
        return cached
    on_path = shutil.which(name)
    if on_path and _reports_pinned_minor(Path(on_path), name):
        return Path(on_path)
    return None


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise BinariesError(
            "the control-plane binaries are not built yet and `go` is not installed: install Go "
            "1.26 or newer (https://go.dev/doc/install, or your distribution's golang package), "
            "or point KOPFLET_BIN_DIR at a directory holding etcd, kube-apiserver, "
            "kube-controller-manager and kubectl"
        )
    return go


def _run_go(args: list[str], *, cwd: Path, progress: Progress, what: str) -> None:
    """Run ``go`` and turn its per-package lines into a progress count."""
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    proc = subprocess.Popen(
        [_go(), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    tail: list[str] = []
    for count, line in enumerate(proc.stdout, start=1):
        tail = [*tail[-40:], line.rstrip()]
        if count % 200 == 0:
            progress(f"{what}: {count} packages compiled so far")
    if proc.wait() != 0:
        raise BinariesError(f"{what} failed:\n" + "\n".join(tail))


def _module_gomod(module: str, version: str, *, cwd: Path) -> str:
    out = subprocess.run(
        [_go(), "mod", "download", "-json", f"{module}@{version}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"},
    )
    if out.returncode != 0:
        raise BinariesError(f"cannot download {module}@{version}: {out.stderr or out.stdout}")
    return Path(json.loads(out.stdout)["GoMod"]).read_text()


def staging_replaces(kubernetes_gomod: str, version: str) -> list[str]:
    """``replace`` lines mapping each staging module to its published v0.<minor>.<patch>."""
    staging_version = "v0." + version.split(".", 1)[1]
    modules = sorted(
        set(
            re.findall(
                r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", kubernetes_gomod, flags=re.MULTILINE
            )
        )
    )
    return [f"replace {m} => {m} {staging_version}" for m in modules]


def kube_ldflags(version: str) -> str:
    major, minor, _ = version.split(".")
    pairs = {
        "k8s.io/component-base/version.gitVersion": f"v{version}",
        "k8s.io/component-base/version.gitMajor": major,
        "k8s.io/component-base/version.gitMinor": minor,
        "k8s.io/component-base/version.gitTreeState": "clean",
        "k8s.io/client-go/pkg/version.gitVersion": f"v{version}",
    }
    return "-s -w " + " ".join(f"-X {k}={v}" for k, v in pairs.items())


def build_kubernetes(progress: Progress = _print_progress) -> Path:
    work = kube_cache_dir() / "src"
    work.mkdir(parents=True, exist_ok=True)
    gomod = _module_gomod("k8s.io/kubernetes", f"v{KUBERNETES_VERSION}", cwd=work)
    (work / "go.mod").write_text(
        "module kopflet.local/kubebuild\n\ngo 1.26.0\n\n"
        f"require k8s.io/kubernetes v{KUBERNETES_VERSION}\n\n"
        + "\n".join(staging_replaces(gomod, KUBERNETES_VERSION))
        + "\n"
    )
    (work / "tools.go").write_text(
        "package kubebuild\n\nimport (\n"
        + "".join(f'\t_ "k8s.io/kubernetes/cmd/{c}"\n' for c in KUBE_COMMANDS)
        + ")\n"
    )
    progress(f"resolving Kubernetes v{KUBERNETES_VERSION} modules")
    _run_go(["mod", "tidy"], cwd=work, progress=progress, what="go mod tidy")
    staging = kube_cache_dir() / "bin.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    progress(
        f"building {', '.join(KUBE_COMMANDS)} v{KUBERNETES_VERSION} (a cold build takes "
        "15-30 minutes on 2 cores; it is cached afterwards)"
    )
    _run_go(
        [
            "build",
            "-v",
            "-trimpath",
            "-ldflags",
            kube_ldflags(KUBERNETES_VERSION),
            "-o",
            str(staging) + "/",
            *(f"k8s.io/kubernetes/cmd/{c}" for c in KUBE_COMMANDS),
        ],
        cwd=work,
        progress=progress,
        what="building Kubernetes",
    )
    final = kube_cache_dir() / "bin"
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    return final


def build_etcd(progress: Progress = _print_progress) -> Path:
    work = etcd_cache_dir() / "src"
    work.mkdir(parents=True, exist_ok=True)
    (work / "go.mod").write_text(
        "module kopflet.local/etcdbuild\n\ngo 1.26.0\n\n"
        f"require go.etcd.io/etcd/server/v3 v{ETCD_VERSION}\n"
    )
    (work / "main.go").write_text(
        'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\n'
        "func main() { etcdmain.Main(os.Args) }\n"
    )
    progress(f"resolving etcd v{ETCD_VERSION} modules")
    _run_go(["mod", "tidy"], cwd=work, progress=progress, what="go mod tidy")
    final = etcd_cache_dir() / "bin"
    final.mkdir(parents=True, exist_ok=True)
    progress(f"building etcd v{ETCD_VERSION}")
    _run_go(
        ["build", "-v", "-trimpath", "-ldflags", "-s -w", "-o", str(final / "etcd.partial"), "."],
        cwd=work,
        progress=progress,
        what="building etcd",
    )
    (final / "etcd.partial").rename(final / "etcd")
    return final


def ensure_binaries(progress: Progress = _print_progress) -> Binaries:
    """Find every binary, building whatever is missing."""
    found = {name: _find(name) for name in ALL_BINARIES}
    if found["etcd"] is None:
        found["etcd"] = build_etcd(progress) / "etcd"
    if any(found[c] is None for c in KUBE_COMMANDS):
        bin_dir = build_kubernetes(progress)
        for c in KUBE_COMMANDS:
            found[c] = found[c] or bin_dir / c
    paths = {name: path for name, path in found.items() if path is not None}
    return Binaries(
        etcd=paths["etcd"],
        kube_apiserver=paths["kube-apiserver"],
        kube_controller_manager=paths["kube-controller-manager"],
        kubectl=paths["kubectl"],
    )
