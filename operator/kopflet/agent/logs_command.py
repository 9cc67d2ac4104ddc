"""``kopflet logs INSTANCE [-n NS] [-c NAME] [-f] [--tail N] [-p]``: a container's output.

The output lives in the Docker engine of the Instance's node; there is no log API in
between (the kubelet's ``/containerLogs`` has no counterpart here). So the command finds the
Instance (its node, uid and containers) through the API, then reads the container's log
from that node's engine:

* on the local cluster (``kopflet up``), every node's engine socket is on this host:
  ``ClusterConfig(name, index).node(i).docker_host`` for node ``node-i``;
* on a kind install, the command runs itself inside the agent pod of that node: ``kubectl
  exec`` into the pod of namespace ``kopflet-system`` labelled
  ``app.kubernetes.io/component=agent`` on that node, container ``agent``, with the
  ``--docker-host`` that container was given (the engine beside it in the pod);
* ``--docker-host`` reads a given engine directly.

The container is found by the labels the runtime gives it (instance uid, container name,
restart count): the current attempt, or with ``--previous`` the one before.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kopflet.agent.runtime.labels import (
    CONTAINER_NAME_LABEL,
    INSTANCE_UID_LABEL,
    RESTART_COUNT_LABEL,
    ROLE_LABEL,
    ContainerRole,
)
from kopflet.api.constants import GROUP, INSTANCE_PLURAL, SYSTEM_NAMESPACE, VERSION

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
AGENT_POD_SELECTOR = "app.kubernetes.io/component=agent"
AGENT_CONTAINER = "agent"
_LOCAL_NODE = re.compile(r"node-(\d+)")


class LogsError(Exception):
    pass


@dataclass(frozen=True, kw_only=True)
class Target:
    node: str
    uid: str
    container: str


def choose_container_name(names: Sequence[str], wanted: str | None, instance: str) -> str:
    if wanted is not None:
        if wanted not in names:
            raise LogsError(
                f"container {wanted} is not valid for instance {instance}; "
                f"choose one of: {', '.join(names)}"
            )
        return wanted
    if len(names) == 1:
        return names[0]
    raise LogsError(
        f"a container name must be specified for instance {instance}, "
        f"choose one of: {', '.join(names)}"
    )


def target_of(obj: Mapping[str, Any], container: str | None) -> Target:
    """The node, uid and container name of an Instance object. Pure."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    name = str(meta.get("name") or "")
    node = spec.get("nodeName")
    if not node:
        raise LogsError(f"instance {name} is not bound to a node yet")
    names = [str(c.get("name")) for c in spec.get("containers") or ()]
    return Target(
        node=str(node),
        uid=str(meta.get("uid")),
        container=choose_container_name(names, container, name),
    )


def choose_container_id(candidates: Sequence[Mapping[str, Any]], *, previous: bool) -> str:
    """The container to read among ``docker ps -a`` entries of one spec container: the
    latest attempt (highest restart count, then newest), or the one before. Pure."""

    def attempt(entry: Mapping[str, Any]) -> tuple[int, int]:
        labels = entry.get("Labels") or {}
        try:
            count = int(labels.get(RESTART_COUNT_LABEL, "0"))
        except ValueError:
            count = 0
        return count, int(entry.get("Created") or 0)

    ordered = sorted(candidates, key=attempt, reverse=True)
    index = 1 if previous else 0
    if len(ordered) <= index:
        what = "previous terminated container" if previous else "container"
        raise LogsError(f"{what} not found on its node (not started yet, or removed)")
    return str(ordered[index]["Id"])


def local_cluster_of(server: str, *, state_root: Path, run_root: Path) -> str | None:
    """The local cluster (``kopflet up``) whose API server is ``server``, if one runs here."""
    import yaml

    if not run_root.is_dir():
        return None
    for run_dir in sorted(run_root.iterdir()):
        kubeconfig = state_root / run_dir.name / "admin.kubeconfig"
        try:
            clusters = (yaml.safe_load(kubeconfig.read_text()) or {}).get("clusters") or []
        except (OSError, yaml.YAMLError):
            continue
        servers = {str((c.get("cluster") or {}).get("server", "")).rstrip("/") for c in clusters}
        if server.rstrip("/") in servers:
            return run_dir.name
    return None


def local_docker_host(node: str, *, cluster: str, run_root: Path) -> str | None:
    """The engine of ``node-i`` of a local cluster, if its socket is on this host."""
    from kopflet.local.config import ClusterConfig

    match = _LOCAL_NODE.fullmatch(node)
    if match is None:
        return None
    found = ClusterConfig(name=cluster, run_root=run_root).node(int(match.group(1)))
    return found.docker_host if found.docker_socket.exists() else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kopflet logs", description=__doc__.splitlines()[0])
    p.add_argument("instance")
    p.add_argument("-n", "--namespace", default=None, help="default: the kubeconfig's")
    p.add_argument("-c", "--container", help="needed when the instance has several")
    p.add_argument("-f", "--follow", action="store_true", help="stream until the container ends")
    p.add_argument("--tail", type=int, default=-1, help="last N lines only (default: all)")
    p.add_argument("-p", "--previous", action="store_true", help="the previous attempt's output")
    p.add_argument("--kubeconfig", help="default: $KUBECONFIG, the local cluster's, ~/.kube/config")
    p.add_argument("--cluster", help="the local cluster (default: the one the kubeconfig is of)")
    p.add_argument("--state-root", default="/var/lib/kopflet", help=argparse.SUPPRESS)
    p.add_argument("--run-root", default="/run/kopflet", help=argparse.SUPPRESS)
    p.add_argument("--docker-host", help="read this engine directly")
    return p


def _api_client(args: argparse.Namespace) -> tuple[Any, str]:
    import kubernetes

    path = args.kubeconfig or os.environ.get("KUBECONFIG")
    if not path:
        local = Path(args.state_root) / (args.cluster or "kopflet") / "admin.kubeconfig"
        home = Path.home() / ".kube" / "config"
        path = str(local) if local.exists() else (str(home) if home.exists() else None)
    if path is None:
        kubernetes.config.load_incluster_config()
        return kubernetes.client.ApiClient(), "default"
    _contexts, current = kubernetes.config.list_kube_config_contexts(config_file=path)
    namespace = (current.get("context") or {}).get("namespace") or "default"
    return kubernetes.config.new_client_from_config(config_file=path), namespace


def _find_target(args: argparse.Namespace) -> tuple[Target, str, str]:
    """The target, its namespace and the API server it was read from."""
    import kubernetes

    client, default_namespace = _api_client(args)
    namespace = args.namespace or default_namespace
    server = str(client.configuration.host)
    try:
        custom = kubernetes.client.CustomObjectsApi(client)
        obj = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, INSTANCE_PLURAL, args.instance
        )
    except kubernetes.client.exceptions.ApiException as exc:
        if exc.status == 404:
            raise LogsError(f'instance "{args.instance}" not found in {namespace}') from exc
        raise LogsError(f"reading instance {args.instance}: {exc.reason}") from exc
    finally:
        client.close()
    if not isinstance(obj, dict):
        raise LogsError(f"instance {args.instance}: unexpected answer {obj!r}")
    return target_of(obj, args.container), namespace, server


def stream_logs(docker_host: str, target: Target, args: argparse.Namespace) -> int:
    import docker

    client = docker.APIClient(base_url=docker_host, version="auto", timeout=None)
    try:
        entries = client.containers(
            all=True,
            filters={
                "label": [
                    f"{INSTANCE_UID_LABEL}={target.uid}",
                    f"{CONTAINER_NAME_LABEL}={target.container}",
                    f"{ROLE_LABEL}={ContainerRole.APP.value}",
                ]
            },
        )
        container = choose_container_id(entries, previous=args.previous)
        output = client.logs(
            container,
            stdout=True,
            stderr=True,
            stream=True,
            follow=args.follow,
            tail="all" if args.tail < 0 else args.tail,
        )
        for chunk in output:
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
    finally:
        client.close()
    return 0


def agent_docker_host(pod: Mapping[str, Any]) -> str:
    """The engine the agent container of a DaemonSet pod talks to (its ``--docker-host``
    flag), where that container sees it. Pure."""
    for container in (pod.get("spec") or {}).get("containers") or ():
        if container.get("name") != AGENT_CONTAINER:
            continue
        args = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
        for i, arg in enumerate(args):
            if arg.startswith("--docker-host="):
                return arg.split("=", 1)[1]
            if arg == "--docker-host" and i + 1 < len(args):
                return args[i + 1]
    return DEFAULT_DOCKER_HOST


def in_pod_argv(args: argparse.Namespace, target: Target, namespace: str, host: str) -> list[str]:
    """``kopflet logs`` as the agent pod runs it: the same request, read from ``host``."""
    argv = [args.instance, "-n", namespace, "-c", target.container, "--docker-host", host]
    if args.follow:
        argv.append("-f")
    if args.previous:
        argv.append("-p")
    if args.tail >= 0:
        argv += ["--tail", str(args.tail)]
    return argv


def _exec_in_agent_pod(
    target: Target, namespace: str, args: argparse.Namespace, kubeconfig: str | None
) -> int:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise LogsError(f"node {target.node} is not local and kubectl is not installed")
    base = [
        kubectl,
        *([f"--kubeconfig={kubeconfig}"] if kubeconfig else []),
        "-n",
        SYSTEM_NAMESPACE,
    ]
    found = subprocess.run(
        [
            *base,
            "get",
            "pods",
            "-l",
            AGENT_POD_SELECTOR,
            "--field-selector",
            f"spec.nodeName={target.node}",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    pods: list[dict[str, Any]] = []
    if found.returncode == 0:
        pods = json.loads(found.stdout or "{}").get("items") or []
    if not pods:
        raise LogsError(f"no agent pod found on node {target.node}: {found.stderr.strip()}")
    pod = pods[0]
    host = agent_docker_host(pod)
    command = [
        *base,
        "exec",
        pod["metadata"]["name"],
        "-c",
        AGENT_CONTAINER,
        "--",
        "kopflet",
        "logs",
        *in_pod_argv(args, target, namespace, host),
    ]
    return subprocess.run(command, check=False).returncode


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    try:
        target, namespace, server = _find_target(args)
        kubeconfig = args.kubeconfig or os.environ.get("KUBECONFIG")
        host = args.docker_host
        if host is None:
            run_root = Path(args.run_root)
            cluster = args.cluster or local_cluster_of(
                server, state_root=Path(args.state_root), run_root=run_root
            )
            if cluster is not None:
                host = local_docker_host(target.node, cluster=cluster, run_root=run_root)
        if host is None:
            return _exec_in_agent_pod(target, namespace, args, kubeconfig)
        return stream_logs(host, target, args)
    except LogsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
