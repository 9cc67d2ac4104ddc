"""Liveness, readiness and startup probes (core ``Probe``, exec / httpGet / tcpSocket)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias

from kopflet.api._codec import Model

#: A port number or the name of a container port (``x-kubernetes-int-or-string``).
IntOrString: TypeAlias = int | str

#: Core defaults, also written as schema defaults in the CRDs.
PROBE_DEFAULTS: Mapping[str, int] = {
    "initial_delay_seconds": 0,
    "timeout_seconds": 1,
    "period_seconds": 10,
    "success_threshold": 1,
    "failure_threshold": 3,
}


@dataclass(frozen=True, kw_only=True)
class ExecAction(Model):
    command: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class HTTPHeader(Model):
    name: str
    value: str


@dataclass(frozen=True, kw_only=True)
class HTTPGetAction(Model):
    port: IntOrString
    path: str | None = None
    host: str | None = None
    scheme: Literal["HTTP", "HTTPS"] | None = None
    http_headers: tuple[HTTPHeader, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class TCPSocketAction(Model):
    port: IntOrString
    host: str | None = None


@dataclass(frozen=True, kw_only=True)
class Probe(Model):
    """Exactly one of ``exec``, ``http_get``, ``tcp_socket`` is set (the CRD enforces it)."""

    exec: ExecAction | None = None
    http_get: HTTPGetAction | None = None
    tcp_socket: TCPSocketAction | None = None
    initial_delay_seconds: int | None = None
    timeout_seconds: int | None = None
    period_seconds: int | None = None
    success_threshold: int | None = None
    failure_threshold: int | None = None
    termination_grace_period_seconds: int | None = None

    def with_defaults(self) -> Probe:
        """This probe with the core timing defaults filled in where absent.

        Objects read from the API server already carry them (schema defaults); this is
        for probes built in code and for tests.
        """
        d = PROBE_DEFAULTS

        def pick(value: int | None, key: str) -> int:
            return d[key] if value is None else value

        return dataclasses.replace(
            self,
            initial_delay_seconds=pick(self.initial_delay_seconds, "initial_delay_seconds"),
            timeout_seconds=pick(self.timeout_seconds, "timeout_seconds"),
            period_seconds=pick(self.period_seconds, "period_seconds"),
            success_threshold=pick(self.success_threshold, "success_threshold"),
            failure_threshold=pick(self.failure_threshold, "failure_threshold"),
        )
