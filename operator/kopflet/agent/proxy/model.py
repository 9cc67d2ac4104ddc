"""The proxy's own values: what one service-port, one endpoint and one node route are.

Pure data, no i/o. Everything the renderers, the trackers and the proxiers exchange is
one of these frozen values, so "did it change?" is plain equality.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NewType

#: How the node programs services: netfilter through ``iptables-restore`` (the
#: default) or ``nft -f``, or a userspace TCP/UDP relay where netfilter can't be used.
ProxyMode = Literal["iptables", "nftables", "userspace"]
PROXY_MODES: tuple[ProxyMode, ...] = ("iptables", "nftables", "userspace")

L4Protocol = Literal["TCP", "UDP"]

#: A netfilter chain (iptables) or chain/set/map (nftables) name.
ChainName = NewType("ChainName", str)
#: ``metadata.name`` of a NodeAgent, which is the node's name.
NodeName = NewType("NodeName", str)


@dataclass(frozen=True, order=True)
class ServicePortName:
    """One port of one ProxyService: the unit every rule is keyed by."""

    namespace: str
    name: str
    port: str = ""  # the port's ``name``; empty for a service's single unnamed port
    # Every sync looks up every service-port in a few dicts and sets: the generated
    # ``__hash__`` would build and hash a tuple each time.
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.namespace, self.name, self.port)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def sort_key(self) -> tuple[str, str, str]:
        """The order of ``<`` as a plain tuple: ``sorted(..., key=...)`` then compares in C
        instead of calling the generated ``__lt__`` for every comparison."""
        return (self.namespace, self.name, self.port)

    @property
    def service(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def __str__(self) -> str:
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port}" if self.port else base


@dataclass(frozen=True, order=True)
class EndpointInfo:
    """A ready instance serving one service-port, at the target port resolved for it."""

    ip: str
    port: int
    node_name: NodeName | None = None
    instance: str | None = None

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class ServicePortInfo:
    """Everything the rules of one service-port depend on, endpoints included.

    ``endpoints`` is sorted, so two infos built from the same object compare equal
    whatever order the controller listed the instances in.
    """

    cluster_ip: str
    port: int
    protocol: L4Protocol
    endpoints: tuple[EndpointInfo, ...] = ()
    node_port: int | None = None
    #: ClientIP affinity timeout in seconds; ``None`` without affinity.
    affinity_timeout: int | None = None


@dataclass(frozen=True, order=True)
class NodeRoute:
    """How to reach another node's instance subnet: via that node's address."""

    node_name: NodeName
    instance_cidr: str
    address: str
