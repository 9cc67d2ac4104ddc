"""``kopflet up``, ``down`` and ``status``: one local cluster, run by a detached supervisor.

``up`` builds or finds the binaries in the foreground (so their progress shows), then starts the
supervisor in its own session and follows its status file until the cluster is ready.
``down`` stops the supervisor and then removes everything by name — processes, namespaces,
links, mounts, data — so it also cleans up after a crash and is safe to run twice.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from loguru import logger

from kopflet.local import bootstrap, controlplane, images, nodes
from kopflet.local.binaries import ensure_binaries
from kopflet.local.components import Component
from kopflet.local.config import ClusterConfig, NodeConfig
from kopflet.local.supervisor import ClusterStatus, Supervisor, hold_name, read_status

UP_TIMEOUT = 600.0


class UpFailed(RuntimeError):
    pass


def supervisor_pid(config: ClusterConfig) -> int | None:
    """The pid of this cluster's live supervisor, if there is one."""
    try:
        pid = int(config.supervisor_pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    if b"supervise" in cmdline and config.name.encode() in cmdline:
        return pid
    return None


def status(config: ClusterConfig) -> ClusterStatus | None:
    if supervisor_pid(config) is None:
        return None
    return read_status(config.status_file)


def _hold_file(config: ClusterConfig, name: str, node: str | None) -> Path:
    return config.run_dir / "hold" / hold_name(name, node)


def _wait_component(
    config: ClusterConfig, name: str, node: str | None, *, state: str, timeout: float
) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = status(config)
        for component in current.components if current else []:
            if component.name == name and component.node == node and component.state == state:
                return component.pid
        time.sleep(0.2)
    raise UpFailed(f"{hold_name(name, node)} did not become {state} within {timeout:.0f}s")


def hold(config: ClusterConfig, name: str, node: str | None = None, *, timeout: float = 60) -> None:
    """Stop a component and keep it stopped (the supervisor would restart a killed one)."""
    path = _hold_file(config, name, node)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    _wait_component(config, name, node, state="held", timeout=timeout)


def release(
    config: ClusterConfig, name: str, node: str | None = None, *, timeout: float = 30
) -> int | None:
    """Start a held component again; its new pid."""
    _hold_file(config, name, node).unlink(missing_ok=True)
    return _wait_component(config, name, node, state="running", timeout=timeout)


def _component_available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _python_component(
    *,
    name: str,
    module: str,
    args: tuple[str, ...],
    log_file: Path,
    node: NodeConfig | None = None,
    env: tuple[tuple[str, str], ...] = (),
) -> Component:
    return Component(
        name=name,
        argv=(sys.executable, "-m", "kopflet", *args),
        log_file=log_file,
        node=node.name if node else None,
        netns_path=node.netns_path if node else None,
        env=(("PYTHONPATH", os.pathsep.join(p for p in sys.path if p)), *env),
        stop_timeout=20.0,
    )


def run_supervisor(config: ClusterConfig) -> int:
    """The body of the detached supervisor process."""
    config.run_dir.mkdir(parents=True, exist_ok=True)
    config.log_dir.mkdir(parents=True, exist_ok=True)
    config.supervisor_pidfile.write_text(str(os.getpid()))
    # `kopflet down --name X` and the other commands find the bridge and namespaces by it.
    config.save()
    supervisor = Supervisor(
        status_file=config.status_file, cluster_name=config.name, hold_dir=config.run_dir / "hold"
    )
    stop = {"requested": False}

    def _on_signal(signum: int, _frame: object) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        _start_cluster(config, supervisor, should_stop=lambda: stop["requested"])
    except Exception as error:  # any failure ends in the status file
        logger.exception("cluster failed to start")
        supervisor.set_phase("Failed", str(error))
        supervisor.stop_all()
        return 1
    supervisor.supervise(should_stop=lambda: stop["requested"])
    supervisor.set_phase("Stopping", "stopping components")
    supervisor.stop_all()
    return 0


def _start_cluster(config: ClusterConfig, supervisor: Supervisor, *, should_stop: object) -> None:
    supervisor.status.details = {
        "apiserver": config.apiserver_url,
        "kubeconfig": str(config.kubeconfig),
        "nodes": str(config.nodes),
    }
    supervisor.set_phase("Starting", "control plane")
    binaries = ensure_binaries(progress=lambda m: logger.info(m))
    nodes.ensure_bridge(config)
    pki = controlplane.prepare(config)
    for component in controlplane.control_plane_components(config, binaries, pki):
        supervisor.start(component)

    supervisor.set_phase("Starting", "CRDs and RBAC")
    bootstrap.apply_api_and_rbac(binaries, config)

    supervisor.set_phase("Starting", f"{config.nodes} nodes")
    node_configs = config.node_configs()
    for node in node_configs:
        nodes.ensure_node_network(config, node)
        supervisor.start(nodes.dockerd_component(config, node), wait_ready=False)
    supervisor.wait_all_ready(timeout=120)

    supervisor.set_phase("Starting", "images")
    images.load_images([n.docker_host for n in node_configs], images.default_images())

    supervisor.set_phase("Starting", "controller and agents")
    kubeconfigs = bootstrap.write_component_kubeconfigs(config, pki)
    agent_kubeconfigs = bootstrap.write_agent_kubeconfigs(
        config, pki, [node.name for node in node_configs]
    )
    if _component_available("kopflet.controller.main"):
        supervisor.start(
            _python_component(
                name="controller",
                module="kopflet.controller.main",
                args=(
                    "controller",
                    "--kubeconfig",
                    str(kubeconfigs[bootstrap.CONTROLLER_SERVICE_ACCOUNT]),
                    # The controller runs on the host: ports of its own per cluster.
                    "--metrics-port",
                    str(config.controller_metrics_port),
                    "--health-port",
                    str(config.controller_health_port),
                ),
                log_file=config.log_dir / "controller.log",
            ),
            wait_ready=False,
        )
    else:
        supervisor.add_placeholder(
            name="controller", node=None, message="the controller is not built yet"
        )
    for node in node_configs:
        if _component_available("kopflet.agent.main"):
            supervisor.start(
                _python_component(
                    name="agent",
                    module="kopflet.agent.main",
                    node=node,
                    args=(
                        "agent",
                        "--node-name",
                        node.name,
                        "--docker-host",
                        node.docker_host,
                        "--kubeconfig",
                        # Bound to this node: the node restriction lets it change only
                        # this node's objects.
                        str(agent_kubeconfigs[node.name]),
                        # Nodes share the host's filesystem: each agent keeps its volumes apart.
                        "--state-dir",
                        str(node.data_dir / "agent"),
                        "--sandbox-image",
                        images.BUSYBOX_IMAGE,
                    ),
                    log_file=config.log_dir / f"{node.name}-agent.log",
                    # As manifests/agent.yaml: glibc's per-thread arenas of the Docker
                    # thread pool keep freed memory resident (docs/AGENT.md, Memory).
                    env=(("MALLOC_ARENA_MAX", "2"),),
                ),
                wait_ready=False,
            )
        else:
            supervisor.add_placeholder(
                name="agent", node=node.name, message="the agent is not built yet"
            )
    supervisor.set_phase("Ready", "")


def up(config: ClusterConfig, *, out: object = sys.stderr) -> ClusterStatus:
    """Start the cluster, or report the one that runs."""
    current = status(config)
    if current is not None and current.phase in {"Ready", "Starting"}:
        if current.phase == "Starting":
            return _follow(config)
        return current
    if os.geteuid() != 0:
        raise UpFailed("kopflet up needs root: it makes network namespaces and starts dockerd")
    for tool in ("dockerd", "nsenter", "ip", "iptables"):
        if shutil.which(tool) is None:
            raise UpFailed(
                f"{tool} is not installed: install Debian's docker.io, util-linux, "
                "iproute2 and iptables packages (`make deps` does)"
            )
    ensure_binaries()
    # Leftovers of a crashed run would clash with the new one.
    down(config, remove_data=False)
    config.run_dir.mkdir(parents=True, exist_ok=True)
    config.log_dir.mkdir(parents=True, exist_ok=True)
    config.status_file.unlink(missing_ok=True)
    with open(config.log_dir / "supervisor.log", "ab") as log:
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kopflet",
                "supervise",
                "--name",
                config.name,
                "--index",
                str(config.index),
                "--nodes",
                str(config.nodes),
                "--state-root",
                str(config.state_root),
                "--run-root",
                str(config.run_root),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        )
    return _follow(config)


def _follow(config: ClusterConfig) -> ClusterStatus:
    deadline = time.monotonic() + UP_TIMEOUT
    last_message = ""
    while time.monotonic() < deadline:
        current = read_status(config.status_file)
        if current is not None:
            if current.message != last_message and current.message:
                print(f"kopflet: {current.message}...", file=sys.stderr, flush=True)
                last_message = current.message
            if current.phase == "Ready":
                return current
            if current.phase == "Failed":
                raise UpFailed(f"{current.message} (logs in {config.log_dir})")
        time.sleep(0.5)
    raise UpFailed(f"the cluster was not ready within {UP_TIMEOUT:.0f}s (logs in {config.log_dir})")


def _pids_referring_to(*roots: Path) -> list[int]:
    needles = [str(r).encode() for r in roots]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if any(n in cmdline for n in needles):
            found.append(int(entry.name))
    return found


def down(config: ClusterConfig, *, remove_data: bool = True) -> None:
    pid = supervisor_pid(config)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 120
        # Started by this process (``up`` in the same one), it stays a zombie until
        # collected: gone is not in /proc, or a zombie.
        while time.monotonic() < deadline and nodes.alive(pid):
            time.sleep(0.3)
        if nodes.alive(pid):
            os.kill(pid, signal.SIGKILL)
        nodes.reap(pid)
    # What a crashed supervisor left behind: its children, found by the directories they use.
    nodes._kill_pids(_pids_referring_to(config.run_dir, config.state_dir), timeout=15)
    for netns in nodes.our_netns(config):
        nodes._kill_pids(nodes.netns_pids(netns), timeout=10)
    nodes.unmount_below(config.run_dir, config.state_dir)
    for netns in nodes.our_netns(config):
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
    for i in range(1, 65):
        link = config.node(i).veth_host
        if Path("/sys/class/net", link).exists():
            subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
    nodes.remove_bridge(config)
    shutil.rmtree(config.run_dir, ignore_errors=True)
    if remove_data:
        nodes.unmount_below(config.state_dir)
        shutil.rmtree(config.state_dir, ignore_errors=True)
