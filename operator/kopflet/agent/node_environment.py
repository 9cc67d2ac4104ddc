"""What the agent finds out about its node at start, when flags do not say it: the node's
address (that of the interface holding the default route) and the sandbox image."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import docker

from kopflet.agent.options import FALLBACK_SANDBOX_IMAGE, LOCAL_SANDBOX_REPOSITORY


class NodeEnvironmentError(RuntimeError):
    pass


def default_route_device(routes: Sequence[Mapping[str, Any]]) -> str | None:
    """The device of the default route in ``ip -j -4 route show default`` output. Pure."""
    for route in routes:
        if route.get("dst") == "default" and route.get("dev"):
            return str(route["dev"])
    return None


def first_global_address(addresses: Sequence[Mapping[str, Any]]) -> str | None:
    """The first global-scope IPv4 address in ``ip -j -4 addr show dev X`` output. Pure."""
    for link in addresses:
        for info in link.get("addr_info") or ():
            if info.get("family") == "inet" and info.get("scope", "global") == "global":
                return str(info["local"])
    return None


def _ip_json(*args: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        ["ip", "-j", "-4", *args], capture_output=True, text=True, timeout=10, check=False
    )
    if done.returncode != 0:
        raise NodeEnvironmentError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    parsed = json.loads(done.stdout or "[]")
    return parsed if isinstance(parsed, list) else []


def detect_node_address() -> str:
    device = default_route_device(_ip_json("route", "show", "default"))
    if device is None:
        raise NodeEnvironmentError("no default route: pass --node-address")
    address = first_global_address(_ip_json("addr", "show", "dev", device))
    if address is None:
        raise NodeEnvironmentError(f"{device} holds no IPv4 address: pass --node-address")
    ipaddress.IPv4Address(address)
    return address


def pick_sandbox_image(local_tags: Iterable[str]) -> str:
    """The newest-sorting local tag of the local cluster's busybox, else the fallback. Pure."""
    ours = sorted(t for t in local_tags if t.startswith(f"{LOCAL_SANDBOX_REPOSITORY}:"))
    return ours[-1] if ours else FALLBACK_SANDBOX_IMAGE


async def find_sandbox_image(docker_host: str) -> str:
    def list_tags() -> list[str]:
        client = docker.APIClient(base_url=docker_host, version="auto", timeout=30)
        try:
            images = client.images(name=LOCAL_SANDBOX_REPOSITORY)
        finally:
            client.close()
        return [tag for image in images for tag in image.get("RepoTags") or ()]

    return pick_sandbox_image(await asyncio.to_thread(list_tags))
