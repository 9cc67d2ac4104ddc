"""The API server, as the controller's sync loops write to it: async JSON over HTTPS.

Credentials come from a kubeconfig (or the in-cluster ServiceAccount) through the kubernetes
client's loaders, so every form a kubeconfig can take works; requests go through one aiohttp
session with a bounded connection pool, in the event loop kopf already runs.

Errors that the loops branch on are typed: :class:`NotFound`, :class:`Conflict` (a stale
resourceVersion or uid precondition), :class:`AlreadyExists` (the name is taken — what makes
allocation records unique).
"""

from __future__ import annotations

import json
import re
import ssl
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import aiohttp
import kubernetes

from kopflet import __version__
from kopflet.api.constants import GROUP, VERSION

JsonObject = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
TOKEN_REFRESH_SECONDS = 60.0
#: The field manager of the controller's writes in ``managedFields`` (the API server takes
#: the User-Agent up to its first "/"), as kube-scheduler's binds show ``kube-scheduler``.
USER_AGENT = f"kopflet-controller/{__version__}"
JSON_PATCH = "application/json-patch+json"


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


class AlreadyExists(ApiError):
    pass


def custom_path(
    plural: str,
    *,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """``/apis/kopflet.dev/v1alpha1[/namespaces/<ns>]/<plural>[/<name>[/<subresource>]]``."""
    return _path(f"/apis/{GROUP}/{VERSION}", plural, namespace, name, subresource)


def lease_path(namespace: str, name: str | None = None) -> str:
    return _path("/apis/coordination.k8s.io/v1", "leases", namespace, name, None)


def events_path(namespace: str) -> str:
    return _path("/apis/events.k8s.io/v1", "events", namespace, None, None)


def _path(
    prefix: str, plural: str, namespace: str | None, name: str | None, sub: str | None
) -> str:
    parts = [prefix]
    if namespace:
        parts.append(f"namespaces/{urllib.parse.quote(namespace)}")
    parts.append(plural)
    if name:
        parts.append(urllib.parse.quote(name))
    if sub:
        parts.append(sub)
    return "/".join(parts)


def load_client_configuration(kubeconfig: str | None) -> kubernetes.client.Configuration:
    """The kubeconfig's current context, or the in-cluster ServiceAccount without one."""
    configuration = kubernetes.client.Configuration()
    if kubeconfig:
        kubernetes.config.load_kube_config(
            config_file=kubeconfig, client_configuration=configuration
        )
    else:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    return configuration


def ssl_context(configuration: kubernetes.client.Configuration) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
    if configuration.cert_file and configuration.key_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def bearer_token(configuration: kubernetes.client.Configuration) -> str | None:
    """The current token (an in-cluster token file is re-read by the client's refresh hook)."""
    header = configuration.get_api_key_with_prefix(
        "BearerToken"
    ) or configuration.get_api_key_with_prefix("authorization")  # older clients' key
    if not header:
        return None
    # The in-cluster loader stores "bearer <token>" (lower case), a kubeconfig "Bearer <token>".
    return re.sub(r"^bearer\s+", "", str(header), flags=re.IGNORECASE).strip()


class ClusterApi(Protocol):
    """What the sync loops need of the API server; :class:`KubeApi` in production, small
    in-memory fakes in the unit tests."""

    async def get(self, path: str) -> JsonObject: ...

    async def list(
        self,
        path: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = 500,
    ) -> list[JsonObject]: ...

    async def create(self, path: str, body: Mapping[str, Any]) -> JsonObject: ...

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> JsonObject: ...

    async def delete(
        self,
        path: str,
        *,
        uid: str | None = None,
        resource_version: str | None = None,
        grace_period_seconds: int | None = None,
    ) -> JsonObject: ...


class KubeApi:
    def __init__(
        self,
        configuration: kubernetes.client.Configuration,
        *,
        connections: int = 48,
        timeout_seconds: float = 30,
        on_request: Any = None,
    ) -> None:
        self._configuration = configuration
        self._server = str(configuration.host).rstrip("/")
        self._connections = connections
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None
        self._on_request = on_request  # (verb, status) -> None, for metrics
        # The client's loader re-reads the kubeconfig on every token lookup (its refresh hook):
        # milliseconds per request. A projected ServiceAccount token lives for an hour or more.
        self._token: str | None = None
        self._token_read_at = -TOKEN_REFRESH_SECONDS

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            ssl=ssl_context(self._configuration), limit=self._connections
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, headers={"User-Agent": USER_AGENT}
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> JsonObject:
        if self._session is None:
            raise RuntimeError("KubeApi.start() was not called")
        headers = {"Accept": "application/json"}
        now = time.monotonic()
        if now - self._token_read_at >= TOKEN_REFRESH_SECONDS:
            self._token, self._token_read_at = bearer_token(self._configuration), now
        token = self._token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        async with self._session.request(
            method, self._server + path, params=params, data=data, headers=headers
        ) as response:
            text = await response.text()
            status = response.status
        if self._on_request is not None:
            self._on_request(method, status)
        parsed: JsonObject = json.loads(text) if text else {}
        if status >= 400:
            raise _error(status, parsed, text)
        return parsed

    async def get(self, path: str) -> JsonObject:
        return await self.request("GET", path)

    async def list(
        self,
        path: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = 500,
    ) -> list[JsonObject]:
        """All items, fetched in pages so a large list never loads the server in one piece."""
        params: dict[str, str] = {"limit": str(page_size)}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        items: list[JsonObject] = []
        while True:
            page = await self.request("GET", path, params=params)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items
            params["continue"] = token

    async def create(self, path: str, body: Mapping[str, Any]) -> JsonObject:
        return await self.request("POST", path, body=body)

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> JsonObject:
        """A JSON merge patch; put ``metadata.resourceVersion`` in it to make it conditional."""
        return await self.request("PATCH", path, body=patch, content_type=MERGE_PATCH)

    async def json_patch(self, path: str, operations: Sequence[Mapping[str, Any]]) -> JsonObject:
        return await self.request("PATCH", path, body=list(operations), content_type=JSON_PATCH)

    async def delete(
        self,
        path: str,
        *,
        uid: str | None = None,
        resource_version: str | None = None,
        grace_period_seconds: int | None = None,
    ) -> JsonObject:
        options: JsonObject = {"kind": "DeleteOptions", "apiVersion": "v1"}
        preconditions = {}
        if uid:
            preconditions["uid"] = uid
        if resource_version:
            preconditions["resourceVersion"] = resource_version
        if preconditions:
            options["preconditions"] = preconditions
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        return await self.request("DELETE", path, body=options)


def _error(status: int, body: JsonObject, text: str) -> ApiError:
    reason = str(body.get("reason") or "")
    message = str(body.get("message") or text[:500])
    if status == 404:
        return NotFound(status, reason or "NotFound", message)
    if status == 409 and reason == "AlreadyExists":
        return AlreadyExists(status, reason, message)
    if status == 409:
        return Conflict(status, reason or "Conflict", message)
    return ApiError(status, reason, message)
