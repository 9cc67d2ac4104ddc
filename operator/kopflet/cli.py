"""The ``kopflet`` command. Subcommands import their machinery lazily, so ``kopflet --version``
and the agent start fast."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from kopflet import __version__


def _cluster_config(args: argparse.Namespace) -> object:
    from kopflet.local.config import ClusterConfig, cluster_index

    return ClusterConfig(
        name=args.name,
        index=cluster_index(Path(args.state_root), args.name, args.index),
        nodes=getattr(args, "nodes", 3),
        state_root=Path(args.state_root),
        run_root=Path(args.run_root),
    )


def _add_cluster_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="kopflet", help="cluster name (default: %(default)s)")
    parser.add_argument(
        "--index",
        type=int,
        default=None,
        help="keeps clusters apart: ports, bridge and subnet derive from it (default: the one"
        " the cluster was started with, else 0)",
    )
    parser.add_argument("--state-root", default="/var/lib/kopflet", help=argparse.SUPPRESS)
    parser.add_argument("--run-root", default="/run/kopflet", help=argparse.SUPPRESS)


def _print_status(current: object, config: object) -> None:
    from kopflet.local.config import ClusterConfig
    from kopflet.local.supervisor import ClusterStatus

    assert isinstance(current, ClusterStatus) and isinstance(config, ClusterConfig)
    print(
        f"cluster {current.name}: {current.phase}"
        + (f" ({current.message})" if current.message else "")
    )
    for key, value in current.details.items():
        print(f"  {key}: {value}")
    print(f"  {'COMPONENT':<26}{'NODE':<10}{'STATE':<12}{'PID':<9}{'RESTARTS':<10}MESSAGE")
    for c in current.components:
        print(
            f"  {c.name:<26}{c.node or '-':<10}{c.state:<12}{c.pid or '-'!s:<9}"
            f"{c.restarts:<10}{c.message}"
        )


def cmd_up(args: argparse.Namespace) -> int:
    from kopflet.local import cluster

    config = _cluster_config(args)
    try:
        current = cluster.up(config)  # type: ignore[arg-type]
    except cluster.UpFailed as error:
        print(f"kopflet up: {error}", file=sys.stderr)
        return 1
    _print_status(current, config)
    kubeconfig = current.details.get("kubeconfig", "")
    print(
        f"\nUse it:\n  export KUBECONFIG={kubeconfig}\n  kubectl get na\n"
        f"  kubectl apply -f examples/web-server.yaml\n"
        f"  kopflet status    # components and restarts\n"
        f"  kopflet down      # removes everything up made"
    )
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from kopflet.local import cluster

    cluster.down(_cluster_config(args))  # type: ignore[arg-type]
    print(f"cluster {args.name}: removed")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from kopflet.local import cluster

    config = _cluster_config(args)
    current = cluster.status(config)  # type: ignore[arg-type]
    if current is None:
        print(f"cluster {args.name}: not running (start it with `kopflet up`)")
        return 3
    _print_status(current, config)
    return 0


def cmd_supervise(args: argparse.Namespace) -> int:
    from kopflet.local import cluster

    return cluster.run_supervisor(_cluster_config(args))  # type: ignore[arg-type]


def cmd_hold(args: argparse.Namespace) -> int:
    from kopflet.local import cluster

    config = _cluster_config(args)
    try:
        if args.command == "hold":
            cluster.hold(config, args.component, args.node)  # type: ignore[arg-type]
        else:
            cluster.release(config, args.component, args.node)  # type: ignore[arg-type]
    except cluster.UpFailed as error:
        print(f"kopflet {args.command}: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_build_binaries(args: argparse.Namespace) -> int:
    from kopflet.local.binaries import BinariesError, ensure_binaries

    try:
        found = ensure_binaries()
    except BinariesError as error:
        print(f"kopflet: {error}", file=sys.stderr)
        return 1
    for name, path in vars(found).items():
        print(f"{name}: {path}")
    return 0


#: Subcommands whose module parses its own arguments: ``kopflet NAME ...`` runs
#: ``MODULE.main(argv)`` with the arguments after NAME.
DELEGATED = {
    "controller": ("kopflet.controller.main", "run the controller"),
    "agent": ("kopflet.agent.main", "run a node agent"),
    "logs": ("kopflet.agent.logs_command", "print or follow a container's output"),
    "load-image": ("kopflet.local.load_image", "put a local image into every node's engine"),
}


def _delegate(command: str, argv: list[str]) -> int:
    module, _help = DELEGATED[command]
    try:
        target = importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is not None and module.startswith(error.name):
            print(f"kopflet: `kopflet {command}` is not built yet", file=sys.stderr)
            return 2
        raise
    return int(target.main(argv))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kopflet", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kopflet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="start the local cluster (or report the running one)")
    _add_cluster_args(p)
    p.add_argument("--nodes", type=int, default=3, help="number of nodes (default: %(default)s)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="remove everything `up` made")
    _add_cluster_args(p)
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="the local cluster's components, nodes and restarts")
    _add_cluster_args(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("supervise", help="the supervisor `up` starts in the background")
    _add_cluster_args(p)
    p.add_argument("--nodes", type=int, default=3)
    p.set_defaults(func=cmd_supervise)

    for command, help_text in (
        ("hold", "stop a component of the local cluster and keep it stopped"),
        ("release", "start a held component again"),
    ):
        p = sub.add_parser(command, help=help_text)
        _add_cluster_args(p)
        p.add_argument("component", help="as `kopflet status` names it: kube-apiserver, dockerd")
        p.add_argument("--node", help="the node of a node component (dockerd, agent)")
        p.set_defaults(func=cmd_hold)

    p = sub.add_parser("build-binaries", help="find or build etcd and the Kubernetes binaries")
    p.set_defaults(func=cmd_build_binaries)

    for name, (_module, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)

    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in DELEGATED:
        return _delegate(arguments[0], arguments[1:])
    args = parser.parse_args(arguments)
    return int(args.func(args))
