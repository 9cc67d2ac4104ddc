"""The API server as the agent talks to it: JSON requests and watch streams over aiohttp.

Credentials come from a kubeconfig (or the in-cluster ServiceAccount) through the kubernetes
client's loaders, so every form a kubeconfig can take works; the requests themselves go
through one aiohttp session in the agent's event loop, so a slow API server never holds a
thread and a watch costs one connection.

Every connection has TCP keepalive probes and a user timeout (:func:`keepalive_socket`): a
watch over a link that went down is otherwise only noticed when its read timeout (the
server's watch timeout plus a margin, minutes) runs out, and the node would miss evictions
and changes that long after the link came back -- client-go pings its HTTP/2 connections for
the same reason. A silent but alive API server (stopped, overloaded) still answers the
probes in its kernel, so this never cuts a watch that is merely quiet.

Errors the loops branch on are typed: :class:`NotFound`, :class:`Conflict`, :class:`Gone`
(a resourceVersion too old to watch from) and :class:`ApiUnavailable` (no answer at all:
retry later, and meanwhile change nothing on the node).
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final

import aiohttp
import kubernetes

from kopflet import __version__
from kopflet.api.constants import GROUP, VERSION

JsonObject = dict[str, Any]

JSON: Final = "application/json"
#: The API server names the field manager of a write after the User-Agent up to its first
#: "/": ``kopflet-agent`` in ``managedFields``, as the kubelet's writes show ``kubelet``.
USER_AGENT: Final = f"kopflet-agent/{__version__}"
MERGE_PATCH: Final = "application/merge-patch+json"
JSON_PATCH: Final = "application/json-patch+json"


class ApiUnavailable(Exception):
    """No answer from the API server (refused, reset, timed out)."""


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class Gone(ApiError):
    """410: the resourceVersion asked for is compacted away; list again."""


class Invalid(ApiError):
    """422: the request does not apply -- among others, a JSON patch whose ``test`` failed."""


_BY_STATUS: Final[dict[int, type[ApiError]]] = {
    404: NotFound,
    409: Conflict,
    410: Gone,
    422: Invalid,
}


def api_error(status: int, body: Mapping[str, Any] | None, fallback: str = "") -> ApiError:
    """The typed error of a ``Status`` object (or of a bare HTTP status)."""
    body = body or {}
    reason = str(body.get("reason") or "")
    message = str(body.get("message") or fallback)
    code = int(body.get("code") or status)
    return _BY_STATUS.get(code, ApiError)(code, reason, message)


def object_path(
    prefix: str,
    plural: str,
    *,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """``<prefix>[/namespaces/<ns>]/<plural>[/<name>[/<subresource>]]``."""
    parts = [prefix]
    if namespace:
        parts.append(f"namespaces/{urllib.parse.quote(namespace)}")
    parts.append(plural)
    if name:
        parts.append(urllib.parse.quote(name))
        if subresource:
            parts.append(subresource)
    return "/".join(parts)


#: Prefixes of the groups the agent uses.
KOPFLET_API: Final = f"/apis/{GROUP}/{VERSION}"
CORE_API: Final = "/api/v1"
COORDINATION_API: Final = "/apis/coordination.k8s.io/v1"
EVENTS_API: Final = "/apis/events.k8s.io/v1"


def load_configuration(kubeconfig: str | None) -> kubernetes.client.Configuration:
    """The kubeconfig's current context, or the in-cluster ServiceAccount without one."""
    configuration = kubernetes.client.Configuration()
    if kubeconfig:
        kubernetes.config.load_kube_config(
            config_file=kubeconfig, client_configuration=configuration
        )
    else:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    return configuration


def _ssl_context(configuration: kubernetes.client.Configuration) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
    if configuration.cert_file and configuration.key_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _bearer_token(configuration: kubernetes.client.Configuration) -> str | None:
    # The in-cluster loader installs a hook that re-reads the projected token file when it
    # is due; without calling it a long-running agent would present an expired token.
    hook = getattr(configuration, "refresh_api_key_hook", None)
    if hook is not None:
        hook(configuration)
    header = configuration.get_api_key_with_prefix("BearerToken") or (
        configuration.get_api_key_with_prefix("authorization")
    )
    # The in-cluster loader stores "bearer <token>" (lower case), a kubeconfig "Bearer <token>".
    return _BEARER_PREFIX.sub("", str(header)).strip() if header else None


_BEARER_PREFIX = re.compile(r"^bearer\s+", re.IGNORECASE)
#: How old a token read may get before the next request reads it again.
TOKEN_REREAD_SECONDS = 60.0


def split_lines(buffer: bytes, chunk: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines of ``buffer + chunk`` and the unfinished rest. A watch sends one JSON
    object per line; one object can be larger than any fixed read buffer (a 1 MiB Secret)."""
    data = buffer + chunk
    *lines, rest = data.split(b"\n")
    return [line for line in lines if line.strip()], rest


#: Idle seconds before the first keepalive probe, seconds between probes, probes lost before
#: the connection is dropped; and how long written data may stay unacknowledged (ms).
KEEPALIVE_IDLE: Final = 15
KEEPALIVE_INTERVAL: Final = 5
KEEPALIVE_PROBES: Final = 3
USER_TIMEOUT_MS: Final = 45_000


def keepalive_socket(addr_info: tuple[Any, ...]) -> socket.socket:
    """A client socket that notices a dead peer in about 30 s of silence (see the module doc)."""
    family, kind, proto = addr_info[0], addr_info[1], addr_info[2]
    sock = socket.socket(family=family, type=kind, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; elsewhere the system's defaults stand
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
    return sock


class KubeClient:
    """One API server; the session is made in the running loop on first use."""

    def __init__(
        self,
        configuration: kubernetes.client.Configuration,
        *,
        request_timeout: float = 30.0,
        # Watches (a handful) and writes share them. Every TLS connection holds asyncio's
        # 256 KiB read buffer: 64 of them were up to 16 MiB of an agent's peak in a burst,
        # for no gain in throughput on the API server's side (the kubelet multiplexes all of
        # its requests over one HTTP/2 connection).
        max_connections: int = 16,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._configuration = configuration
        self._base = str(configuration.host).rstrip("/")
        self._request_timeout = request_timeout
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._clock = clock
        self._token: str | None = None
        self._token_read_at: float | None = None

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None, **kwargs: Any) -> KubeClient:
        return cls(load_configuration(kubeconfig), **kwargs)

    @property
    def host(self) -> str:
        return self._base

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                ssl=_ssl_context(self._configuration),
                limit=self._max_connections,
                socket_factory=keepalive_socket,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, headers={"User-Agent": USER_AGENT}
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _bearer(self) -> str | None:
        """The token, read again (the loader's refresh hook) once it is a minute old, as
        client-go re-reads a token file: the hook rebuilds the whole configuration, which
        cost ~6% of an agent's Python time in a burst when it ran on every request. A
        rotated token is good long before the old one expires."""
        now = self._clock()
        if self._token_read_at is None or now - self._token_read_at >= TOKEN_REREAD_SECONDS:
            self._token = _bearer_token(self._configuration)
            self._token_read_at = now
        return self._token

    def forget_token(self) -> None:
        """Read the token again before the next request (the API server refused it)."""
        self._token_read_at = None

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": JSON}
        token = self._bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def url(self, path: str, params: Mapping[str, str] | None = None) -> str:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return f"{self._base}{path}{query}"

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> JsonObject:
        data = None if body is None else json.dumps(body)
        if data is not None and content_type is None:
            content_type = JSON
        timeout = aiohttp.ClientTimeout(total=self._request_timeout)
        try:
            async with self._session_now().request(
                method,
                self.url(path, params),
                data=data,
                headers=self._headers(content_type),
                timeout=timeout,
            ) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ApiUnavailable(f"{method} {path}: {exc!r}") from exc
        parsed: Any = None
        if text:
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
        if status >= 400:
            if status == 401:
                self.forget_token()
            raise api_error(status, parsed if isinstance(parsed, dict) else None, text[:500])
        return parsed if isinstance(parsed, dict) else {}

    async def get(self, path: str, *, params: Mapping[str, str] | None = None) -> JsonObject:
        return await self.request("GET", path, params=params)

    async def create(self, path: str, body: Mapping[str, Any]) -> JsonObject:
        return await self.request("POST", path, body=body)

    async def replace(self, path: str, body: Mapping[str, Any]) -> JsonObject:
        return await self.request("PUT", path, body=body)

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> JsonObject:
        return await self.request("PATCH", path, body=patch, content_type=MERGE_PATCH)

    async def json_patch(self, path: str, operations: list[Mapping[str, Any]]) -> JsonObject:
        return await self.request("PATCH", path, body=operations, content_type=JSON_PATCH)

    async def watch(
        self, path: str, *, params: Mapping[str, str], server_timeout: int
    ) -> AsyncIterator[JsonObject]:
        """The events of one watch request, until the server ends it (``server_timeout``)
        or the connection breaks (:class:`ApiUnavailable`)."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=server_timeout + 30)
        query = {**params, "watch": "true", "timeoutSeconds": str(server_timeout)}
        try:
            async with self._session_now().get(
                self.url(path, query), headers=self._headers(None), timeout=timeout
            ) as response:
                if response.status >= 400:
                    if response.status == 401:
                        self.forget_token()
                    text = await response.text()
                    try:
                        parsed = json.loads(text)
                    except ValueError:
                        parsed = None
                    raise api_error(
                        response.status, parsed if isinstance(parsed, dict) else None, text[:500]
                    )
                rest = b""
                async for chunk in response.content.iter_any():
                    lines, rest = split_lines(rest, chunk)
                    for line in lines:
                        yield json.loads(line)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ApiUnavailable(f"watch {path}: {exc!r}") from exc
