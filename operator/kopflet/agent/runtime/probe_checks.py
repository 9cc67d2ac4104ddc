"""The three probe mechanisms: exec inside the container, httpGet and tcpSocket from the node.

Network probes go from the node to the instance IP on the node's own instance bridge,
like the kubelet's; they never leave the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from kopflet.agent.runtime.container_runtime import ContainerRuntime
from kopflet.agent.runtime.labels import ContainerID
from kopflet.agent.runtime.probes import ProbeCheck, ProbeOutcome
from kopflet.api import Container, IntOrString, Probe

_MAX_OUTPUT = 1024


class ProbeConfigError(ValueError):
    pass


def resolve_port(container: Container, port: IntOrString) -> int:
    if isinstance(port, int):
        return port
    if port.isdigit():
        return int(port)
    named = container.port_named(port)
    if named is None:
        raise ProbeConfigError(f"no container port named {port!r}")
    return named.container_port


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()


async def tcp_check(host: str, port: int) -> ProbeOutcome:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        return ProbeOutcome(ok=False, message=f"dial tcp {host}:{port}: {exc.strerror or exc}")
    await _close(writer)
    return ProbeOutcome(ok=True)


async def http_check(
    *,
    host: str,
    port: int,
    path: str,
    scheme: str,
    headers: tuple[tuple[str, str], ...],
) -> ProbeOutcome:
    """One GET; 200-399 is success. HTTPS is not verified, as with the kubelet."""
    context = None
    if scheme == "HTTPS":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
    except OSError as exc:
        url = f"{scheme.lower()}://{host}:{port}{path}"
        return ProbeOutcome(ok=False, message=f"Get {url}: {exc.strerror or exc}")
    try:
        names = {name.lower() for name, _ in headers}
        lines = [f"GET {path} HTTP/1.1"]
        if "host" not in names:
            lines.append(f"Host: {host}:{port}")
        if "user-agent" not in names:
            lines.append("User-Agent: kopflet-probe/1")
        lines += [f"{name}: {value}" for name, value in headers]
        lines += ["Connection: close", "", ""]
        writer.write("\r\n".join(lines).encode("latin-1"))
        await writer.drain()
        status_line = (await reader.readline()).decode("latin-1").strip()
    except (OSError, ssl.SSLError) as exc:
        return ProbeOutcome(ok=False, message=f"HTTP probe failed: {exc}")
    finally:
        await _close(writer)
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return ProbeOutcome(ok=False, message=f"malformed HTTP status line {status_line!r}")
    code = int(parts[1])
    if 200 <= code < 400:
        return ProbeOutcome(ok=True)
    return ProbeOutcome(ok=False, message=f"HTTP probe failed with statuscode: {code}")


def probe_check(
    *,
    probe: Probe,
    container: Container,
    container_id: ContainerID,
    instance_ip: str,
    runtime: ContainerRuntime,
) -> ProbeCheck:
    """The check a worker runs; raises :class:`ProbeConfigError` for a probe it cannot run."""
    timeout = float(probe.timeout_seconds or 1)
    if probe.exec is not None:
        command = probe.exec.command

        async def run_exec() -> ProbeOutcome:
            result = await runtime.exec_in_container(container_id, command, timeout_seconds=timeout)
            return ProbeOutcome(
                ok=result.exit_code == 0, message=result.output[-_MAX_OUTPUT:].strip()
            )

        return run_exec
    if probe.http_get is not None:
        action = probe.http_get
        port = resolve_port(container, action.port)
        headers = tuple((h.name, h.value) for h in action.http_headers or ())

        async def run_http() -> ProbeOutcome:
            return await http_check(
                host=action.host or instance_ip,
                port=port,
                path=action.path or "/",
                scheme=action.scheme or "HTTP",
                headers=headers,
            )

        return run_http
    if probe.tcp_socket is not None:
        tcp = probe.tcp_socket
        tcp_port = resolve_port(container, tcp.port)

        async def run_tcp() -> ProbeOutcome:
            return await tcp_check(tcp.host or instance_ip, tcp_port)

        return run_tcp
    raise ProbeConfigError("probe has no exec, httpGet or tcpSocket")
