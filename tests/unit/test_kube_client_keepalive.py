"""The agent's API connections notice a dead peer (a link gone down) in about 30 s."""

from __future__ import annotations

import socket

import pytest

from kopflet.agent.kube_client import (
    KEEPALIVE_IDLE,
    KEEPALIVE_INTERVAL,
    KEEPALIVE_PROBES,
    USER_TIMEOUT_MS,
    keepalive_socket,
)

pytestmark = pytest.mark.unit


def test_client_sockets_probe_an_idle_peer_and_give_up_on_unacknowledged_data() -> None:
    info = socket.getaddrinfo("127.0.0.1", 6443, type=socket.SOCK_STREAM)[0]
    with keepalive_socket(info) as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE_IDLE
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == KEEPALIVE_INTERVAL
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == KEEPALIVE_PROBES
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == USER_TIMEOUT_MS
    # Dead within idle + probes x interval: well under the watch's read timeout.
    assert KEEPALIVE_IDLE + KEEPALIVE_PROBES * KEEPALIVE_INTERVAL <= 30


def test_keepalive_sockets_connect_like_any_other() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        info = socket.getaddrinfo("127.0.0.1", port, type=socket.SOCK_STREAM)[0]
        with keepalive_socket(info) as client:
            client.settimeout(5)
            client.connect(info[4])
            accepted, _ = server.accept()
            with accepted:
                client.sendall(b"ping")
                assert accepted.recv(4) == b"ping"
