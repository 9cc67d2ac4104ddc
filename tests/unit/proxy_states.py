"""Random proxy states for the proxiers' equivalence tests: a partial sync after each random
change must leave what a full sync of the final state leaves, whatever the mode."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from kopflet.agent.proxy.model import EndpointInfo, ServicePortInfo, ServicePortName
from kopflet.agent.proxy.proxier import ProxyState

B = TypeVar("B")

CIDRS = ("10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24")


def random_state(rnd: random.Random, size: int) -> ProxyState:
    """Up to ``size`` service-ports picked at random, each with random endpoints, node port,
    affinity and protocol; some without endpoints share a virtual IP and port (they want the
    same REJECT, or the same map entry)."""
    ports: dict[ServicePortName, ServicePortInfo] = {}
    for i in range(size):
        if rnd.random() < 0.3:
            continue
        endpoints = tuple(
            sorted(
                EndpointInfo(f"10.244.{j}.{i + 1}", rnd.choice([8080, 9090]))
                for j in rnd.sample(range(6), rnd.randint(0, 4))
            )
        )
        ports[ServicePortName("ns", f"svc-{i}", "http" if i % 3 else "")] = ServicePortInfo(
            cluster_ip=f"10.96.0.{100 + i if endpoints else i // 2}",
            port=rnd.choice([80, 8080]) if endpoints else 53,
            protocol=rnd.choice(["TCP", "UDP"]),
            endpoints=endpoints,
            node_port=rnd.choice([None, 30000 + i, 31000 + i]),
            affinity_timeout=rnd.choice([None, 60, 120]),
        )
    return ProxyState(service_ports=ports, instance_cidrs=tuple(sorted(rnd.sample(CIDRS, 2))))


def next_state(rnd: random.Random, current: ProxyState, size: int) -> ProxyState:
    """``current`` with three service-ports changed (added, removed, replaced, or -- more
    often -- only their endpoints), and now and then other instance subnets."""
    target = random_state(rnd, size)
    mixed = dict(current.service_ports)
    for name in rnd.sample(sorted(mixed.keys() | target.service_ports.keys()), 3):
        if name in target.service_ports:
            new, old = target.service_ports[name], mixed.get(name)
            keep = old is not None and old.endpoints and new.endpoints and rnd.random() < 0.6
            mixed[name] = replace(old, endpoints=new.endpoints) if keep and old else new
        else:
            mixed.pop(name, None)
    cidrs = target.instance_cidrs if rnd.random() < 0.3 else current.instance_cidrs
    return ProxyState(service_ports=mixed, instance_cidrs=cidrs)


def changed_between(before: ProxyState, after: ProxyState) -> set[ServicePortName]:
    """What the change tracker hands the proxier: every service-port that differs."""
    a, b = before.service_ports, after.service_ports
    return {n for n in a.keys() | b.keys() if a.get(n) != b.get(n)}


def check_partial_syncs(
    seed: int,
    make: Callable[[], tuple[B, Any]],
    programmed: Callable[[B], object],
    *,
    rounds: int,
) -> B:
    """Random partial syncs on one proxier; after each, what it programmed and its rule
    count must equal a fresh proxier's full sync of the same state. ``make`` gives a
    backend and a proxier on it; the first one's backend is returned."""
    rnd = random.Random(seed)
    backend, proxier = make()
    current = random_state(rnd, 12)
    assert proxier.sync_blocking(current, changed=set(), full=True).full
    for _ in range(rounds):
        after = next_state(rnd, current, 12)
        outcome = proxier.sync_blocking(after, changed=changed_between(current, after), full=False)
        assert not outcome.full
        current = after
        fresh_backend, fresh_proxier = make()
        fresh = fresh_proxier.sync_blocking(current, changed=set(), full=True)
        assert programmed(backend) == programmed(fresh_backend)
        assert outcome.rules_programmed == fresh.rules_programmed
    return backend
