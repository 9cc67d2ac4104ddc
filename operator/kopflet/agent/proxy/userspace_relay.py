"""Userspace mode's data path: one listener per service address, relaying to endpoints.

Endpoints are picked round-robin, or by client address for ClientIP affinity. A TCP
connection whose endpoint refuses is retried on the next endpoint (the client can't
tell, it has not been answered yet). UDP keeps one upstream socket per client address
until it has been idle for ``udp_idle_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from loguru import logger

from kopflet.agent.proxy.model import EndpointInfo

CONNECT_TIMEOUT = 5.0
UDP_IDLE_TIMEOUT = 60.0
MAX_UDP_SESSIONS = 4096
_CHUNK = 65536


@dataclass
class EndpointPicker:
    endpoints: tuple[EndpointInfo, ...]
    affinity_timeout: int | None
    clock: Callable[[], float]
    _next: int = 0
    _sticky: dict[str, tuple[EndpointInfo, float]] = field(default_factory=dict)

    def update(self, endpoints: tuple[EndpointInfo, ...], affinity_timeout: int | None) -> None:
        self.endpoints = endpoints
        self.affinity_timeout = affinity_timeout
        if affinity_timeout is None:
            self._sticky.clear()
        else:
            alive = set(endpoints)
            self._sticky = {c: s for c, s in self._sticky.items() if s[0] in alive}

    def pick(self, client: str) -> EndpointInfo | None:
        if not self.endpoints:
            return None
        now = self.clock()
        if self.affinity_timeout is not None:
            sticky = self._sticky.get(client)
            if sticky is not None and sticky[1] > now:
                self._sticky[client] = (sticky[0], now + self.affinity_timeout)
                return sticky[0]
        endpoint = self.endpoints[self._next % len(self.endpoints)]
        self._next = (self._next + 1) % len(self.endpoints)
        if self.affinity_timeout is not None:
            self._sticky[client] = (endpoint, now + self.affinity_timeout)
        return endpoint

    def forget(self, client: str) -> None:
        self._sticky.pop(client, None)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


class TcpRelay:
    def __init__(self, picker: EndpointPicker) -> None:
        self.picker = picker
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._handle, host, port, reuse_address=True)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = str(writer.get_extra_info("peername")[0])
        upstream = None
        for _ in range(max(1, len(self.picker.endpoints))):
            endpoint = self.picker.pick(client)
            if endpoint is None:
                break
            try:
                upstream = await asyncio.wait_for(
                    asyncio.open_connection(endpoint.ip, endpoint.port), CONNECT_TIMEOUT
                )
                break
            except (OSError, TimeoutError) as exc:
                logger.debug("userspace proxy: {} unreachable: {}", endpoint.address, exc)
                self.picker.forget(client)
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay, client: tuple[str, int]) -> None:
        self.relay = relay
        self.client = client

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.relay.reply(self.client, data)


@dataclass
class _Session:
    upstream: asyncio.DatagramTransport
    endpoint: EndpointInfo
    last_seen: float


class UdpRelay(asyncio.DatagramProtocol):
    def __init__(self, picker: EndpointPicker, *, idle_timeout: float = UDP_IDLE_TIMEOUT) -> None:
        self.picker = picker
        self.idle_timeout = idle_timeout
        self.transport: asyncio.DatagramTransport | None = None
        self._sessions: dict[tuple[str, int], _Session] = {}
        self._pending: dict[tuple[str, int], list[bytes]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(host, port), reuse_port=False
        )
        self.transport = transport
        self._sweeper = asyncio.create_task(self._sweep())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for session in self._sessions.values():
            session.upstream.close()
        self._sessions.clear()
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        client = (str(addr[0]), int(addr[1]))
        session = self._sessions.get(client)
        if session is not None:
            session.upstream.sendto(data)
            session.last_seen = asyncio.get_running_loop().time()
        elif client in self._pending:
            self._pending[client].append(data)
        elif len(self._sessions) < MAX_UDP_SESSIONS:
            self._pending[client] = [data]
            asyncio.get_running_loop().create_task(self._open(client))

    async def _open(self, client: tuple[str, int]) -> None:
        endpoint = self.picker.pick(client[0])
        try:
            if endpoint is None:
                return
            loop = asyncio.get_running_loop()
            upstream, _ = await loop.create_datagram_endpoint(
                lambda: _Upstream(self, client), remote_addr=(endpoint.ip, endpoint.port)
            )
        except OSError as exc:
            logger.debug("userspace proxy: udp upstream failed: {}", exc)
            return
        finally:
            queued = self._pending.pop(client, [])
        self._sessions[client] = _Session(upstream, endpoint, loop.time())
        for data in queued:
            upstream.sendto(data)

    def reply(self, client: tuple[str, int], data: bytes) -> None:
        if self.transport is not None:
            self.transport.sendto(data, client)

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(self.idle_timeout, 5.0))
            cutoff = loop.time() - self.idle_timeout
            for client, session in list(self._sessions.items()):
                if session.last_seen < cutoff:
                    session.upstream.close()
                    del self._sessions[client]

    def drop_sessions_to_removed_endpoints(self) -> None:
        """The userspace twin of the conntrack flush: a client of a removed endpoint
        gets a new one with its next datagram."""
        alive = set(self.picker.endpoints)
        for client, session in list(self._sessions.items()):
            if session.endpoint not in alive:
                session.upstream.close()
                del self._sessions[client]
