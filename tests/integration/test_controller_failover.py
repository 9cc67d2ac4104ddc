"""Crash-only behaviour of the controller: a restart keeps every allocation, a standby takes
over within 15 s, and the leader serves metrics and health."""

from __future__ import annotations

import signal
import socket
import time
import urllib.request

from test_controller_harness import (
    Api,
    Controllers,
    FakeNodes,
    admin,
    controllers,
    fake_nodes,
    proxy_service,
    wait_available,
    workload,
)

from conftest import TestCluster
from kopflet.api.constants import NODEAGENT_PLURAL, PROXYSERVICE_PLURAL, WORKLOAD_PLURAL
from support import wait_for

__all__ = ["admin", "controllers", "fake_nodes"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:  # not listening (yet)
        return 0, ""


def allocations(admin: Api, namespace: str, nodes: list[str]) -> dict[str, object]:
    found: dict[str, object] = {}
    for service in admin.list(PROXYSERVICE_PLURAL, namespace):
        spec = service["spec"]
        found[service["metadata"]["name"]] = (
            spec.get("clusterIP"),
            tuple(p.get("nodePort") for p in spec["ports"]),
        )
    for node in nodes:
        found[node] = ((admin.get(NODEAGENT_PLURAL, node) or {}).get("spec") or {}).get(
            "instanceCIDR"
        )
    return found


def test_a_controller_restart_keeps_every_allocation(
    cluster: TestCluster,
    admin: Api,
    controllers: Controllers,
    fake_nodes: FakeNodes,
    namespace: str,
) -> None:
    nodes = [fake_nodes.add(), fake_nodes.add()]
    for n in range(5):
        admin.create(PROXYSERVICE_PLURAL, proxy_service(f"svc-{n}", type_="NodePort"), namespace)

    def complete() -> dict[str, object] | None:
        found = allocations(admin, namespace, nodes)
        services = [v for v in found.values() if isinstance(v, tuple)]
        done = all(ip and None not in ports for ip, ports in services) and all(
            found[n] for n in nodes
        )
        return found if done else None

    before = wait_for(complete, timeout=60, message="everything allocated")
    killed = controllers.kill_leader(signal.SIGKILL)  # no clean shutdown, no lease release
    controllers.restart_own_if_needed()
    leader = wait_for(
        lambda: (who := controllers.leader()) and Controllers.pid_of(who) != killed and who,
        timeout=60,
        message="a new controller leads",
        diagnose=lambda: cluster.log_tail("controller.log"),
    )
    assert Controllers.pid_of(leader) != killed

    admin.create(PROXYSERVICE_PLURAL, proxy_service("after", type_="NodePort"), namespace)
    newcomer = fake_nodes.add()
    after = wait_for(
        lambda: (
            (found := allocations(admin, namespace, [*nodes, newcomer]))
            and found.get("after")
            and found["after"][0]
            and found[newcomer]
            and found
        ),
        timeout=60,
        message="new objects get allocations after the restart",
        diagnose=lambda: cluster.log_tail("controller.log"),
    )
    assert {k: after[k] for k in before} == before
    old_ips = {v[0] for k, v in before.items() if isinstance(v, tuple)}
    old_ports = {p for v in before.values() if isinstance(v, tuple) for p in v[1]}
    assert after["after"][0] not in old_ips
    assert not set(after["after"][1]) & old_ports
    assert after[newcomer] not in {before[n] for n in nodes}


def test_a_standby_takes_over_within_15s_and_serves_metrics_and_health(
    cluster: TestCluster,
    admin: Api,
    controllers: Controllers,
    fake_nodes: FakeNodes,
    namespace: str,
) -> None:
    metrics_port, health_port = free_port(), free_port()
    standby = controllers.start_replica(
        "--metrics-port",
        str(metrics_port),
        "--health-port",
        str(health_port),
        "--bind-address",
        "127.0.0.1",
        "--log-format",
        "json",
    )
    base = f"http://127.0.0.1:{health_port}"
    wait_for(
        lambda: get(f"{base}/readyz") == (200, "ok (standby)"),
        timeout=30,
        message="the second replica waits as a standby",
    )
    assert get(f"{base}/healthz")[0] == 200

    controllers.kill_leader(signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(
        lambda: controllers.leader() == f"{socket.gethostname()}_{standby.pid}",
        timeout=20,
        interval=0.2,
        message="the standby holds the lease",
    )
    took = time.monotonic() - killed_at
    assert took < 15, f"took over after {took:.1f}s"
    controllers.restart_own_if_needed()

    # It does the job: a new Workload gets its Instances.
    fake_nodes.add()
    admin.create(
        WORKLOAD_PLURAL, workload("after", replicas=2, node_selector=fake_nodes.selector), namespace
    )
    wait_available(
        admin,
        namespace,
        "after",
        2,
        timeout=30,
        diagnose=lambda: cluster.diagnose("workload", "after", namespace),
    )
    assert time.monotonic() - killed_at < 45
    assert get(f"{base}/readyz") == (200, "ok (leader)")

    def scraped() -> str | None:
        status, text = get(f"http://127.0.0.1:{metrics_port}/metrics")
        # The object gauges are refreshed every 15 s: wait for the first refresh.
        wanted = 'kopflet_controller_objects{kind="Workload",phase="All"}'
        return text if status == 200 and wanted in text else None

    text = wait_for(scraped, timeout=20, message="the leader's metrics")
    assert "kopflet_controller_leader 1.0" in text
    assert 'kopflet_controller_reconciles_total{controller="workload",result="ok"}' in text
    assert "kopflet_controller_queue_latency_seconds_bucket" in text
    assert "kopflet_controller_unschedulable_instances " in text
    assert 'kopflet_controller_api_requests_total{code="201",verb="POST"}' in text
