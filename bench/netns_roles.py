"""What the data-plane bench (#4) runs inside a network namespace, entered with ``nsenter``:

netns_roles.py client HOST PORT conn|bulk --seconds S --concurrency N
    new connections/s (HTTP/1.0 GETs, N at a time) or MB/s (one stream) for S seconds;
    prints ``{"rate": ...}``;
netns_roles.py engine MODE NAMESPACE
    the agent's ProxyEngine in MODE, fed once from the bench cluster's API (every NodeAgent,
    the ProxyServices of NAMESPACE); prints ``synced`` once programmed, runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import time
from collections.abc import Sequence

from bench_cluster import BenchCluster, as_dict

from kopflet.api.constants import GROUP, NODEAGENT_PLURAL, PROXYSERVICE_PLURAL, VERSION

HTTP_PORT = 8080
#: The same server on a port of its own for the direct path (see data_plane.py).
DIRECT_HTTP_PORT = 8081
BULK_PORT = 9000
REQUEST = b"GET /etc/passwd HTTP/1.0\r\n\r\n"
CHUNK = b"\0" * (256 * 1024)
#: An engine nobody stops still goes away.
ENGINE_TIMEOUT = 1800.0


# -- the client, run inside a namespace --------------------------------------------------------


async def _connections(host: str, port: int, *, seconds: float, concurrency: int) -> int:
    done = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
            writer.write(REQUEST)
            await asyncio.wait_for(reader.read(-1), 5)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


def _bulk(host: str, port: int, *, seconds: float) -> int:
    sent = 0
    with socket.create_connection((host, port), timeout=10) as sock:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            sock.sendall(CHUNK)
            sent += len(CHUNK)
    return sent


def client_main(args: argparse.Namespace) -> None:
    host, port = args.host, args.port
    started = time.monotonic()
    if args.kind == "conn":
        count = asyncio.run(
            _connections(host, port, seconds=args.seconds, concurrency=args.concurrency)
        )
        rate = count / (time.monotonic() - started)
    else:
        sent = _bulk(host, port, seconds=args.seconds)
        rate = sent / (time.monotonic() - started) / 1e6
    print(json.dumps({"rate": rate}), flush=True)


# -- the engine of a mode, run inside the bench's own namespace --------------------------


def engine_main(args: argparse.Namespace) -> None:
    """Run the agent's ProxyEngine here, fed once from the API, until SIGTERM."""
    from kopflet.agent.proxy import ProxyEngine, ProxyMetrics

    cluster = BenchCluster()
    engine = ProxyEngine(
        node_name="bench-client", mode=args.mode, metrics=ProxyMetrics(registry=None)
    )
    for node in as_dict(
        cluster.custom.list_cluster_custom_object(GROUP, VERSION, NODEAGENT_PLURAL)
    )["items"]:
        engine.on_node(None, node)
    for service in as_dict(
        cluster.custom.list_namespaced_custom_object(
            GROUP, VERSION, args.namespace, PROXYSERVICE_PLURAL
        )
    )["items"]:
        engine.on_service(None, service)
    engine.mark_initial_lists_complete()

    async def serve() -> None:
        if not await engine.sync_now():
            raise SystemExit("the first sync failed")
        print("synced", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        runner = asyncio.create_task(engine.run())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=ENGINE_TIMEOUT)
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner

    asyncio.run(serve())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    roles = parser.add_subparsers(dest="role", required=True)
    client = roles.add_parser("client")
    client.add_argument("host")
    client.add_argument("port", type=int)
    client.add_argument("kind", choices=("conn", "bulk"))
    client.add_argument("--seconds", type=float, default=3.0)
    client.add_argument("--concurrency", type=int, default=8)
    engine = roles.add_parser("engine")
    engine.add_argument("mode", choices=("iptables", "nftables", "userspace"))
    engine.add_argument("namespace")
    args = parser.parse_args(argv)
    if args.role == "client":
        client_main(args)
    else:
        engine_main(args)


if __name__ == "__main__":
    main()
