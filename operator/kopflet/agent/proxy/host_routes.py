"""Host subnetting: a route on this node to every other node's instance subnet.

``ip route replace <subnet> via <node address> proto 147``: the protocol number marks
the routes as ours, so reconciling and cleanup list exactly ours and never touch a
route someone else installed. The plan is pure; :class:`HostRoutes` executes it.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass

from kopflet.agent.proxy.chain_names import ROUTE_PROTOCOL
from kopflet.agent.proxy.commands import CommandError, CommandRunner
from kopflet.agent.proxy.model import NodeName, NodeRoute


@dataclass(frozen=True, order=True)
class Route:
    destination: str  # a normalised CIDR
    gateway: str


@dataclass(frozen=True)
class RoutePlan:
    replace: tuple[Route, ...] = ()
    delete: tuple[Route, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.replace and not self.delete


def normalise_cidr(cidr: str) -> str:
    return str(ipaddress.ip_network(cidr, strict=False))


def desired_routes(nodes: Iterable[NodeRoute], *, own_node: NodeName) -> list[Route]:
    """One route per other node; a subnet claimed twice goes to the lower node name
    (the controller's IPAM never does that, but a route table holds one of them)."""
    by_destination: dict[str, Route] = {}
    for node in sorted(nodes):
        if node.node_name == own_node:
            continue
        destination = normalise_cidr(node.instance_cidr)
        by_destination.setdefault(destination, Route(destination, node.address))
    return sorted(by_destination.values())


def plan_routes(desired: Iterable[Route], observed: Iterable[Route]) -> RoutePlan:
    want = {r.destination: r for r in desired}
    have = {r.destination: r for r in observed}
    replace = tuple(sorted(r for d, r in want.items() if have.get(d) != r))
    delete = tuple(sorted(r for d, r in have.items() if d not in want))
    return RoutePlan(replace=replace, delete=delete)


class HostRoutes:
    def __init__(self, runner: CommandRunner | None = None) -> None:
        self._runner = runner or CommandRunner()

    def observe(self) -> list[Route]:
        done = self._runner.run(["ip", "-j", "-4", "route", "show", "proto", str(ROUTE_PROTOCOL)])
        return [
            Route(normalise_cidr(entry["dst"]), entry.get("gateway", ""))
            for entry in json.loads(done.stdout or "[]")
        ]

    def apply(self, plan: RoutePlan) -> list[CommandError]:
        """Every step is tried; the failures are returned (an unreachable gateway for
        one node must not keep the routes to the others from being installed)."""
        errors = []
        for route in plan.delete:
            args = ["ip", "route", "del", route.destination, "proto", str(ROUTE_PROTOCOL)]
            try:
                self._runner.run(args)
            except CommandError as exc:
                errors.append(exc)
        for route in plan.replace:
            args = ["ip", "route", "replace", route.destination, "via", route.gateway]
            try:
                self._runner.run([*args, "proto", str(ROUTE_PROTOCOL)])
            except CommandError as exc:
                errors.append(exc)
        return errors

    def sync(self, nodes: Iterable[NodeRoute], *, own_node: NodeName) -> list[CommandError]:
        plan = plan_routes(desired_routes(nodes, own_node=own_node), self.observe())
        return self.apply(plan) if not plan.empty else []

    def cleanup(self) -> list[CommandError]:
        return self.apply(plan_routes((), self.observe()))
