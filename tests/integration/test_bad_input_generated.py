"""Generated Instance specs that the API server accepts — good, odd and unrunnable — never
crash the agent or the controller, and every one of them reaches a reported state.

A Hypothesis strategy draws specs from the fields a user writes (images present and absent,
commands that run, exit or do not exist, env from literals, missing ConfigMap keys and the
downward API, ports, limits, probes, security contexts, emptyDir mounts, restart policies). A
spec the API server refuses is not an input the node can see: it is discarded, not failed.
Examples are few and each is bounded in time; the runs are reproducible from the printed seed.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from fault_cluster import FaultCluster, faults_cluster, faults_namespace
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from kubernetes.client.exceptions import ApiException

from kopflet.api.constants import GROUP, INSTANCE_PLURAL, VERSION
from support import wait_for

__all__ = ["faults_cluster", "faults_namespace"]

pytestmark = pytest.mark.timeout(900)

EXAMPLES = 12
#: From creation to a reported state: a status with a phase and a state per container.
REPORT_SECONDS = 60

names = st.from_regex(r"\A[a-z][a-z0-9]{0,6}\Z")
env_names = st.from_regex(r"\A[A-Z_][A-Z0-9_]{0,10}\Z")
abs_paths = st.lists(names, min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts))

#: Mostly the image every node has, so the other fields get exercised; now and then one that
#: no node has or can pull.
images = st.one_of(
    st.just("kopflet/busybox:local"),
    st.just("kopflet/busybox:local"),
    st.just("kopflet/busybox:local"),
    st.sampled_from(["kopflet/absent:v1", "kopflet/busybox:local@sha256:" + "0" * 64]),
)
commands = st.sampled_from(
    [
        None,
        ["sleep", "3600"],
        ["true"],
        ["false"],
        ["sh", "-c", "exit 3"],
        ["/not/a/binary"],
        ["sh", "-c", "echo $(A) and $$; sleep 3600"],
        ["httpd", "-f", "-p", "8080"],
    ]
)
env_values = st.one_of(
    st.builds(lambda v: {"value": v}, st.text(max_size=20)),
    st.builds(
        lambda key, optional: {
            "valueFrom": {
                "configMapKeyRef": {"name": "generated", "key": key, "optional": optional}
            }
        },
        st.sampled_from(["present", "absent"]),
        st.booleans(),
    ),
    st.builds(
        lambda path: {"valueFrom": {"fieldRef": {"fieldPath": path}}},
        st.sampled_from(["metadata.name", "spec.nodeName", "status.instanceIP"]),
    ),
)
probes = st.one_of(
    st.none(),
    st.builds(
        lambda port, period: {"tcpSocket": {"port": port}, "periodSeconds": period},
        st.sampled_from([8080, 1, 65535]),
        st.integers(1, 3),
    ),
    st.builds(
        lambda code: {"exec": {"command": ["sh", "-c", f"exit {code}"]}, "periodSeconds": 1},
        st.integers(0, 2),
    ),
)
security = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "runAsUser": st.integers(0, 70000),
            "runAsNonRoot": st.booleans(),
            "readOnlyRootFilesystem": st.booleans(),
            "allowPrivilegeEscalation": st.booleans(),
            "capabilities": st.fixed_dictionaries(
                {}, optional={"drop": st.just(["ALL"]), "add": st.just(["CHOWN"])}
            ),
        },
    ),
)


@st.composite
def containers(draw: st.DrawFn, name: str, volumes: list[str]) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": draw(images)}
    if (policy := draw(st.sampled_from([None, "Never", "IfNotPresent"]))) is not None:
        container["imagePullPolicy"] = policy
    if (command := draw(commands)) is not None:
        container["command"] = command
    env = draw(st.dictionaries(env_names, env_values, max_size=3))
    if env:
        container["env"] = [{"name": k, **v} for k, v in env.items()]
    if draw(st.booleans()):
        container["ports"] = [{"containerPort": draw(st.integers(1, 65535))}]
    limits = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "memory": st.sampled_from(["6Mi", "64Mi", "1Gi"]),
                "cpu": st.sampled_from(["1m", "100m", "2"]),
            },
        )
    )
    if limits:
        container["resources"] = {"limits": limits}
    for kind in ("readinessProbe", "livenessProbe"):
        if (probe := draw(probes)) is not None:
            container[kind] = probe
    if (context := draw(security)) is not None:
        container["securityContext"] = context
    if draw(st.booleans()):
        container["workingDir"] = draw(abs_paths)
    mounts = draw(st.lists(st.sampled_from(volumes), unique=True)) if volumes else []
    if mounts:
        container["volumeMounts"] = [
            {"name": v, "mountPath": draw(abs_paths), "readOnly": draw(st.booleans())}
            for v in mounts
        ]
    return container


@st.composite
def instance_specs(draw: st.DrawFn) -> dict[str, Any]:
    volumes = draw(st.lists(names, max_size=2, unique=True))
    count = draw(st.integers(1, 2))
    return {
        "restartPolicy": draw(st.sampled_from(["Always", "OnFailure", "Never"])),
        "terminationGracePeriodSeconds": draw(st.integers(0, 2)),
        "containers": [draw(containers(f"c{i}", volumes)) for i in range(count)],
        **({"volumes": [{"name": v, "emptyDir": {}} for v in volumes]} if volumes else {}),
    }


def _reported(instance: dict[str, Any]) -> bool:
    status = instance.get("status") or {}
    if status.get("phase") not in {"Pending", "Running", "Succeeded", "Failed"}:
        return False
    reported = {s.get("name"): s for s in status.get("containerStatuses") or []}
    for container in instance["spec"]["containers"]:
        state = (reported.get(container["name"]) or {}).get("state") or {}
        if not any(state.get(k) for k in ("waiting", "running", "terminated")):
            return False
    return True


def _log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def test_generated_specs_never_crash_a_component_and_always_get_a_status(
    faults_cluster: FaultCluster, faults_namespace: str
) -> None:
    cluster, ns = faults_cluster, faults_namespace
    node = cluster.nodes[0]
    cluster.kubectl("-n", ns, "create", "configmap", "generated", "--from-literal=present=yes")
    agent = cluster.component("agent", node.name)
    controller = cluster.component("controller")
    agent_log = cluster.config.log_dir / f"{node.name}-agent.log"
    log_from = _log_size(agent_log)
    api = cluster.custom()
    outcomes: list[str] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        database=None,
    )
    @given(spec=instance_specs())
    def example(spec: dict[str, Any]) -> None:
        name = f"gen-{uuid.uuid4().hex[:8]}"
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Instance",
            "metadata": {"name": name},
            "spec": {**spec, "nodeName": node.name},
        }
        try:
            api.create_namespaced_custom_object(GROUP, VERSION, ns, INSTANCE_PLURAL, body)
        except ApiException as error:
            assume(error.status != 422)  # refused by the API server: never reaches a node
            raise
        reported = wait_for(
            lambda: (i := cluster.get("instances", name, ns)) is not None and _reported(i) and i,
            timeout=REPORT_SECONDS,
            interval=0.5,
            message=f"generated instance {name} reaches a reported state",
            diagnose=lambda: f"spec: {spec}\n" + cluster.diagnose("instance", name, ns),
        )
        outcomes.append(str(reported["status"].get("reason") or reported["status"]["phase"]))
        # Leave the node as busy as one example at a time.
        api.delete_namespaced_custom_object(
            GROUP, VERSION, ns, INSTANCE_PLURAL, name, grace_period_seconds=0
        )

    try:
        example()
    finally:
        api.api_client.close()
    print("outcomes:", sorted(outcomes))
    assert outcomes, "every generated spec was refused by the API server"
    time.sleep(1)
    after_agent = cluster.component("agent", node.name)
    after_controller = cluster.component("controller")
    assert (after_agent.pid, after_agent.restarts) == (agent.pid, agent.restarts)
    assert (after_controller.pid, after_controller.restarts) == (
        controller.pid,
        controller.restarts,
    )
    # No pass of the agent hit a bug (the engine logs those as crashed, and carries on).
    with open(agent_log, errors="replace") as log:
        log.seek(log_from)
        added = log.read()
    assert "crashed, retrying" not in added and "Traceback" not in added, added[-3000:]
