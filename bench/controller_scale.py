"""Controller at scale (a benchmark, not a test): 1,000 Workloads of 5 replicas, 5,000
Instances created, scheduled and reported, against a local cluster. Prints the time until every
Workload's status is reconciled and the controller's memory.

    python bench/controller_scale.py                       # the `kopflet up` cluster
    python bench/controller_scale.py --name kopflet-test --index 1 --workloads 200

The Instances go to fake nodes made here (NodeAgents with heartbeats, labels unique to the run),
so no container starts: this measures the controller and the API server, not Docker. With
``--ready`` a stand-in agent also reports every bound Instance Ready, and the clock stops when
every Workload is Available. Everything made here is deleted at the end (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes

from kopflet.api.constants import (
    GROUP,
    INSTANCE_PLURAL,
    NODE_LEASE_NAMESPACE,
    NODEAGENT_PLURAL,
    SYSTEM_NAMESPACE,
    VERSION,
    WORKLOAD_PLURAL,
)
from kopflet.local.config import ClusterConfig

LEADER_LEASE = "kopflet-controller"


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


def wait_until(probe: Callable[[], Any], *, timeout: float, what: str, every: float = 2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(every)
    raise SystemExit(f"gave up after {timeout:.0f}s waiting for {what}")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.config = ClusterConfig(name=args.name, index=args.index)
        kubeconfig = args.kubeconfig or str(self.config.kubeconfig)
        client = kubernetes.config.new_client_from_config(config_file=kubeconfig)
        client.configuration.connection_pool_maxsize = 32
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.core = kubernetes.client.CoreV1Api(client)
        self.leases = kubernetes.client.CoordinationV1Api(client)
        run = uuid.uuid4().hex[:6]
        self.namespace = f"bench-{run}"
        self.label = f"kopflet.dev/bench-{run}"
        self.nodes = [f"bench-{run}-{n}" for n in range(args.nodes)]
        self.stop = threading.Event()
        self.started: subprocess.Popen[bytes] | None = None

    # --- the controller ------------------------------------------------------------------

    def leader_pid(self) -> int | None:
        try:
            lease = self.leases.read_namespaced_lease(LEADER_LEASE, SYSTEM_NAMESPACE)
        except kubernetes.client.ApiException:
            return None
        spec = lease.spec
        if spec is None or not spec.holder_identity or spec.renew_time is None:
            return None
        if (datetime.now(UTC) - spec.renew_time).total_seconds() > 10:
            return None
        host, _, pid = str(spec.holder_identity).rpartition("_")
        if host != socket.gethostname():
            return None
        return int(pid)

    def ensure_controller(self) -> int:
        pid = self.leader_pid()
        if pid is None:
            log("no controller leads this cluster: starting one")
            kubeconfig = self.config.state_dir / "kopflet-controller.kubeconfig"
            logfile = open(self.config.log_dir / "controller-bench.log", "ab")  # noqa: SIM115
            self.started = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kopflet",
                    "controller",
                    "--kubeconfig",
                    str(kubeconfig),
                    "--metrics-port",
                    "0",
                    "--health-port",
                    "0",
                ],
                stdout=logfile,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            logfile.close()
            pid = wait_until(self.leader_pid, timeout=60, what="the controller to lead")
        return int(pid)

    @staticmethod
    def memory(pid: int) -> tuple[int, int]:
        """(RSS, peak RSS) in MiB."""
        fields = dict(
            line.split(":", 1)
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if ":" in line
        )
        return (int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024)

    # --- fake nodes and their heartbeats ---------------------------------------------------

    def make_nodes(self) -> None:
        capacity = {"cpu": "1000", "memory": "1000Gi", "instances": "10000"}
        for name in self.nodes:
            self.custom.create_cluster_custom_object(
                GROUP,
                VERSION,
                NODEAGENT_PLURAL,
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "NodeAgent",
                    "metadata": {"name": name, "labels": {self.label: "yes"}},
                },
            )
            self.custom.patch_cluster_custom_object_status(
                GROUP,
                VERSION,
                NODEAGENT_PLURAL,
                name,
                {
                    "status": {
                        "capacity": capacity,
                        "allocatable": capacity,
                        "conditions": [
                            {
                                "type": "Ready",
                                "status": "True",
                                "reason": "AgentReady",
                                "lastTransitionTime": _now(),
                            }
                        ],
                    }
                },
            )
            self.leases.create_namespaced_lease(
                NODE_LEASE_NAMESPACE,
                kubernetes.client.V1Lease(
                    metadata=kubernetes.client.V1ObjectMeta(name=name),
                    spec=kubernetes.client.V1LeaseSpec(
                        holder_identity=name,
                        lease_duration_seconds=40,
                        renew_time=datetime.now(UTC),
                    ),
                ),
            )
        threading.Thread(target=self._heartbeats, daemon=True).start()

    def _heartbeats(self) -> None:
        while not self.stop.wait(10):
            for name in self.nodes:
                with contextlib.suppress(Exception):
                    self.leases.patch_namespaced_lease(
                        name,
                        NODE_LEASE_NAMESPACE,
                        {"spec": {"renewTime": datetime.now(UTC).isoformat()}},
                    )

    # --- the load --------------------------------------------------------------------------

    def workload(self, n: int) -> dict[str, Any]:
        labels = {"app": f"w{n}"}
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Workload",
            "metadata": {"name": f"w{n}"},
            "spec": {
                "replicas": self.args.replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "nodeSelector": {self.label: "yes"},
                        "containers": [
                            {
                                "name": "main",
                                "image": "kopflet/busybox:1.35.0",
                                "command": ["sleep", "3600"],
                                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                            }
                        ],
                    },
                },
            },
        }

    def create_workloads(self) -> None:
        def create(n: int) -> None:
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, WORKLOAD_PLURAL, self.workload(n)
            )

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(create, range(self.args.workloads)))

    def list_all(self, plural: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token = None
        while True:
            page: dict[str, Any] = self.custom.list_namespaced_custom_object(  # type: ignore[assignment]
                GROUP, VERSION, self.namespace, plural, limit=500, _continue=token
            )
            items += page["items"]
            token = page["metadata"].get("continue")
            if not token:
                return items

    def progress(self) -> tuple[int, int, int, int]:
        """(workloads reconciled, workloads available, instances, instances bound)."""
        want = self.args.replicas
        reconciled = available = 0
        for w in self.list_all(WORKLOAD_PLURAL):
            status = w.get("status") or {}
            if (
                status.get("observedGeneration") == w["metadata"]["generation"]
                and status.get("replicas") == want
                and status.get("updatedReplicas") == want
            ):
                reconciled += 1
            if status.get("availableReplicas") == want:
                available += 1
        instances = self.list_all(INSTANCE_PLURAL)
        bound = sum(1 for i in instances if i["spec"].get("nodeName"))
        return reconciled, available, len(instances), bound

    def _stand_in_agent(self) -> None:
        """Report every bound Instance Ready (only with --ready)."""
        done: set[str] = set()
        while not self.stop.wait(1):
            todo = [
                i
                for i in self.list_all(INSTANCE_PLURAL)
                if i["spec"].get("nodeName") and i["metadata"]["uid"] not in done
            ]

            def ready(item: dict[str, Any]) -> None:
                with contextlib.suppress(Exception):
                    self.custom.patch_namespaced_custom_object_status(
                        GROUP,
                        VERSION,
                        self.namespace,
                        INSTANCE_PLURAL,
                        item["metadata"]["name"],
                        {
                            "status": {
                                "phase": "Running",
                                "instanceIP": "10.244.0.2",
                                "conditions": [
                                    {
                                        "type": "Ready",
                                        "status": "True",
                                        "lastTransitionTime": _now(),
                                    }
                                ],
                            }
                        },
                    )
                    done.add(item["metadata"]["uid"])

            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(ready, todo))

    def cleanup(self) -> None:
        self.stop.set()
        log(f"deleting namespace {self.namespace} and {len(self.nodes)} fake nodes")
        with contextlib.suppress(kubernetes.client.ApiException):
            self.core.delete_namespace(self.namespace)
        for name in self.nodes:
            with contextlib.suppress(kubernetes.client.ApiException):
                self.custom.delete_cluster_custom_object(GROUP, VERSION, NODEAGENT_PLURAL, name)
            with contextlib.suppress(kubernetes.client.ApiException):
                self.leases.delete_namespaced_lease(name, NODE_LEASE_NAMESPACE)
        if self.started is not None:
            self.started.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.started.wait(timeout=30)

    def run(self) -> None:
        args = self.args
        pid = self.ensure_controller()
        rss, _ = self.memory(pid)
        log(f"controller pid {pid}: {rss} MiB RSS before the run")
        self.core.create_namespace(
            kubernetes.client.V1Namespace(
                metadata=kubernetes.client.V1ObjectMeta(name=self.namespace)
            )
        )
        self.make_nodes()
        if args.ready:
            threading.Thread(target=self._stand_in_agent, daemon=True).start()
        total = args.workloads * args.replicas
        log(f"creating {args.workloads} Workloads x {args.replicas} replicas = {total} Instances")
        started = time.monotonic()
        self.create_workloads()
        created = time.monotonic() - started
        log(f"{args.workloads} Workloads created in {created:.1f}s")

        peak = rss
        last = (-1, -1, -1, -1)

        def finished() -> bool:
            nonlocal peak, last
            state = self.progress()
            peak = max(peak, self.memory(pid)[0])
            if state != last:
                log(
                    f"workloads reconciled {state[0]}/{args.workloads}, available {state[1]},"
                    f" instances {state[2]}/{total}, bound {state[3]}"
                )
                last = state
            done = state[0] == args.workloads and state[2] == total and state[3] == total
            return done and (not args.ready or state[1] == args.workloads)

        wait_until(finished, timeout=args.timeout, what="every Workload to be reconciled", every=3)
        elapsed = time.monotonic() - started
        rss, hwm = self.memory(pid)
        print()
        print(
            f"controller_scale: {args.workloads} Workloads, {total} Instances on"
            f" {len(self.nodes)} fake nodes{' (Ready)' if args.ready else ''}"
        )
        print(
            f"  reconciled in        {elapsed:8.1f} s  ({total / elapsed:.0f} Instances/s,"
            f" creates took {created:.1f} s)"
        )
        print(f"  controller RSS       {rss:8d} MiB  (sampled peak {peak} MiB, VmHWM {hwm} MiB)")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="kopflet", help="local cluster name (%(default)s)")
    parser.add_argument("--index", type=int, default=0, help="local cluster index (%(default)s)")
    parser.add_argument("--kubeconfig", help="admin kubeconfig (default: the local cluster's)")
    parser.add_argument("--workloads", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=10, help="fake nodes (%(default)s)")
    parser.add_argument("--ready", action="store_true", help="report Instances Ready too")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--keep", action="store_true", help="keep the objects afterwards")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print(
            "controller_scale: run as root (the local cluster's credentials are root's)",
            file=sys.stderr,
        )
        return 2
    bench = Bench(args)
    try:
        bench.run()
    finally:
        if not args.keep:
            bench.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
