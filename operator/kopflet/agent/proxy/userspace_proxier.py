"""Userspace mode: for hosts where netfilter can't be programmed.

Every virtual IP is put on a link of ours (``kopflet-vip0``) so it is a local address,
and a relay listens on ``virtual IP:port`` for each service-port with endpoints, plus
``0.0.0.0:nodePort`` for node ports. Traffic from the node and from its instances
(whose gateway is the node) reaches the relays without a single netfilter rule.

A service-port without endpoints has no listener: its virtual IP is still local, so a
connection is refused at once. Unlike the netfilter modes, connections through the
relays do not survive an agent restart: the process holding them is gone.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Set
from dataclasses import dataclass

from loguru import logger

from kopflet.agent.proxy.chain_names import VIP_LINK
from kopflet.agent.proxy.commands import CommandError, CommandRunner
from kopflet.agent.proxy.model import (
    EndpointInfo,
    L4Protocol,
    ProxyMode,
    ServicePortInfo,
    ServicePortName,
)
from kopflet.agent.proxy.proxier import ProxyState, SyncOutcome
from kopflet.agent.proxy.userspace_relay import EndpointPicker, TcpRelay, UdpRelay

ANY_ADDRESS = "0.0.0.0"


@dataclass(frozen=True, order=True)
class ListenAddress:
    host: str
    port: int
    protocol: L4Protocol


@dataclass(frozen=True)
class ListenerSpec:
    endpoints: tuple[EndpointInfo, ...]
    affinity_timeout: int | None


def desired_listeners(
    service_ports: Mapping[ServicePortName, ServicePortInfo],
) -> dict[ListenAddress, ListenerSpec]:
    """Listeners for every service-port that has endpoints. Pure."""
    listeners: dict[ListenAddress, ListenerSpec] = {}
    for name in sorted(service_ports):
        info = service_ports[name]
        if not info.endpoints:
            continue
        spec = ListenerSpec(info.endpoints, info.affinity_timeout)
        listeners[ListenAddress(info.cluster_ip, info.port, info.protocol)] = spec
        if info.node_port is not None:
            listeners[ListenAddress(ANY_ADDRESS, info.node_port, info.protocol)] = spec
    return listeners


class VipLink:
    """The link holding the virtual IPs: every address on it is ours."""

    def __init__(self, runner: CommandRunner | None = None, name: str = VIP_LINK) -> None:
        self._runner = runner or CommandRunner()
        self.name = name

    def exists(self) -> bool:
        return self._runner.run(["ip", "link", "show", self.name], check=False).returncode == 0

    def ensure(self) -> None:
        if self.exists():
            return
        # A dummy link is the natural holder; kernels without the dummy module get an
        # empty bridge, which holds local addresses just as well.
        for kind in ("dummy", "bridge"):
            done = self._runner.run(["ip", "link", "add", self.name, "type", kind], check=False)
            if done.returncode == 0:
                break
        else:
            raise CommandError(["ip", "link", "add", self.name], done.returncode, done.stderr)
        self._runner.run(["ip", "link", "set", self.name, "up"])

    def addresses(self) -> set[str]:
        done = self._runner.run(["ip", "-j", "-4", "addr", "show", "dev", self.name])
        return {
            info["local"]
            for link in json.loads(done.stdout or "[]")
            for info in link.get("addr_info", [])
        }

    def sync(self, wanted: Set[str]) -> None:
        self.ensure()
        have = self.addresses()
        for address in sorted(wanted - have):
            self._runner.run(["ip", "addr", "add", f"{address}/32", "dev", self.name])
        for address in sorted(have - wanted):
            self._runner.run(["ip", "addr", "del", f"{address}/32", "dev", self.name])

    def delete(self) -> None:
        if self.exists():
            self._runner.run(["ip", "link", "del", self.name])


class UserspaceProxier:
    def __init__(self, runner: CommandRunner | None = None) -> None:
        self._vips = VipLink(runner)
        self._relays: dict[ListenAddress, TcpRelay | UdpRelay] = {}
        self._specs: dict[ListenAddress, ListenerSpec] = {}

    @property
    def mode(self) -> ProxyMode:
        return "userspace"

    @property
    def listening(self) -> Set[ListenAddress]:
        return set(self._relays)

    async def sync(
        self, state: ProxyState, *, changed: Set[ServicePortName], full: bool
    ) -> SyncOutcome:
        wanted_vips = {info.cluster_ip for info in state.service_ports.values()}
        # Addresses first: a listener can't bind a virtual IP that isn't local yet.
        await asyncio.to_thread(self._vips.sync, wanted_vips)
        desired = desired_listeners(state.service_ports)
        for address in sorted(set(self._relays) - set(desired)):
            await self._relays.pop(address).close()
            del self._specs[address]
        errors: list[str] = []
        for address, spec in desired.items():
            relay = self._relays.get(address)
            if relay is None:
                try:
                    relay = await self._start(address, spec)
                except OSError as exc:
                    errors.append(f"{address.host}:{address.port}/{address.protocol}: {exc}")
                    continue
                self._relays[address] = relay
            elif self._specs[address] != spec:
                relay.picker.update(spec.endpoints, spec.affinity_timeout)
                if isinstance(relay, UdpRelay):
                    relay.drop_sessions_to_removed_endpoints()
            self._specs[address] = spec
        if errors:
            # Failing the sync makes the loop retry with back-off until the port is free.
            raise OSError("userspace listeners failed: " + "; ".join(errors))
        return SyncOutcome(full=True, rules_programmed=len(self._relays))

    async def _start(self, address: ListenAddress, spec: ListenerSpec) -> TcpRelay | UdpRelay:
        loop = asyncio.get_running_loop()
        picker = EndpointPicker(spec.endpoints, spec.affinity_timeout, clock=loop.time)
        relay: TcpRelay | UdpRelay = (
            TcpRelay(picker) if address.protocol == "TCP" else UdpRelay(picker)
        )
        await relay.start(address.host, address.port)
        logger.debug("userspace proxy listening on {}", address)
        return relay

    async def canary_intact(self) -> bool:
        # The only thing outside the process that can vanish is the link of VIPs.
        if not self._specs:
            return True
        return await asyncio.to_thread(self._vips.exists)

    async def close(self) -> None:
        for relay in self._relays.values():
            await relay.close()
        self._relays.clear()
        self._specs.clear()

    def cleanup(self) -> None:
        self._vips.delete()
