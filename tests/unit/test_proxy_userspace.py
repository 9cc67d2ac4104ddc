"""Userspace mode: endpoint picking, and the relays on loopback (no privileges needed)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from kopflet.agent.proxy.model import EndpointInfo, ServicePortInfo, ServicePortName
from kopflet.agent.proxy.userspace_proxier import ANY_ADDRESS, ListenAddress, desired_listeners
from kopflet.agent.proxy.userspace_relay import EndpointPicker, TcpRelay, UdpRelay

pytestmark = pytest.mark.unit

E1, E2, E3 = (EndpointInfo(f"10.244.{i}.2", 8080) for i in (1, 2, 3))


class Ticker:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_round_robin_visits_every_endpoint_in_turn() -> None:
    picker = EndpointPicker((E1, E2, E3), None, clock=Ticker())
    assert [picker.pick("c") for _ in range(6)] == [E1, E2, E3, E1, E2, E3]


def test_client_ip_affinity_sticks_until_the_timeout_runs_out() -> None:
    clock = Ticker()
    picker = EndpointPicker((E1, E2, E3), 10, clock=clock)
    first = picker.pick("10.0.0.1")
    assert {picker.pick("10.0.0.1") for _ in range(5)} == {first}
    assert picker.pick("10.0.0.2") != first
    clock.now = 100
    assert picker.pick("10.0.0.1") != first  # expired: round-robin moved on


def test_affinity_to_a_removed_endpoint_is_forgotten() -> None:
    picker = EndpointPicker((E1, E2), 100, clock=Ticker())
    sticky = picker.pick("c")
    picker.update(tuple(e for e in (E1, E2) if e != sticky), 100)
    assert picker.pick("c") != sticky


def test_no_endpoints_picks_nothing() -> None:
    assert EndpointPicker((), None, clock=Ticker()).pick("c") is None


def test_listeners_exist_only_for_service_ports_with_endpoints() -> None:
    ports = {
        ServicePortName("a", "web"): ServicePortInfo(
            cluster_ip="10.96.0.10", port=80, protocol="TCP", endpoints=(E1,), node_port=30080
        ),
        ServicePortName("a", "none"): ServicePortInfo(
            cluster_ip="10.96.0.11", port=80, protocol="TCP", node_port=30081
        ),
    }
    assert set(desired_listeners(ports)) == {
        ListenAddress("10.96.0.10", 80, "TCP"),
        ListenAddress(ANY_ADDRESS, 30080, "TCP"),
    }


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tcp_relay_round_robins_connections_and_skips_a_dead_endpoint() -> None:
    async def scenario() -> list[bytes]:
        servers, endpoints = [], []
        for name in (b"one", b"two"):

            async def answer(
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: bytes = name
            ) -> None:
                writer.write(name + b":" + await reader.read(100))
                await writer.drain()
                writer.close()

            server = await asyncio.start_server(answer, "127.0.0.1", 0)
            servers.append(server)
            endpoints.append(EndpointInfo("127.0.0.1", server.sockets[0].getsockname()[1]))
        dead = EndpointInfo("127.0.0.1", _free_port(socket.SOCK_STREAM))
        relay = TcpRelay(EndpointPicker((endpoints[0], dead, endpoints[1]), None, clock=Ticker()))
        port = _free_port(socket.SOCK_STREAM)
        await relay.start("127.0.0.1", port)
        replies = []
        for _ in range(4):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"hi")
            writer.write_eof()
            replies.append(await asyncio.wait_for(reader.read(100), 5))
            writer.close()
        await relay.close()
        for server in servers:
            server.close()
        return replies

    replies = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert sorted(replies) == [b"one:hi", b"one:hi", b"two:hi", b"two:hi"]


def test_udp_relay_answers_each_client_from_its_endpoint() -> None:
    async def scenario() -> bytes:
        loop = asyncio.get_running_loop()

        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                self.transport.sendto(b"echo:" + data, addr)  # type: ignore[attr-defined]

        echo_transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        endpoint = EndpointInfo("127.0.0.1", echo_transport.get_extra_info("sockname")[1])
        relay = UdpRelay(EndpointPicker((endpoint,), None, clock=Ticker()))
        port = _free_port(socket.SOCK_DGRAM)
        await relay.start("127.0.0.1", port)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.settimeout(5)
        client.sendto(b"ping", ("127.0.0.1", port))
        reply = await loop.run_in_executor(None, client.recv, 100)
        client.close()
        await relay.close()
        echo_transport.close()
        return reply

    assert asyncio.run(asyncio.wait_for(scenario(), 30)) == b"echo:ping"
