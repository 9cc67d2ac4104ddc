"""The ranges the controller allocates from — service IPs, node ports, node instance subnets —
and the names of the allocation records that make each value unique. Pure.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Container, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

AllocationKind = Literal["clusterip", "nodeport", "instancecidr"]


def allocation_name(kind: AllocationKind, value: str) -> str:
    """The record's object name: the value itself, so the API server refuses a second holder
    (``clusterip-10-96-0-12``, ``nodeport-30080``, ``instancecidr-10-244-3-0-24``)."""
    return f"{kind}-" + value.replace(".", "-").replace("/", "-")


class Pool(Protocol):
    @property
    def size(self) -> int: ...

    def __contains__(self, value: object) -> bool: ...

    def value_at(self, index: int) -> str: ...


@dataclass(frozen=True)
class AddressPool:
    """Host addresses of a CIDR: neither the network nor the broadcast address."""

    network: ipaddress.IPv4Network

    @classmethod
    def parse(cls, cidr: str) -> AddressPool:
        return cls(ipaddress.IPv4Network(cidr, strict=True))

    @property
    def size(self) -> int:
        return max(0, self.network.num_addresses - 2)

    def __contains__(self, value: object) -> bool:
        try:
            address = ipaddress.IPv4Address(str(value))
        except ValueError:
            return False
        first, last = self.network.network_address, self.network.broadcast_address
        return first < address < last

    def value_at(self, index: int) -> str:
        return str(self.network.network_address + 1 + index)


@dataclass(frozen=True)
class SubnetPool:
    """Equal subnets of a cluster CIDR, one per node (``10.244.0.0/16`` in ``/24`` pieces)."""

    network: ipaddress.IPv4Network
    prefix: int

    @classmethod
    def parse(cls, cidr: str, prefix: int) -> SubnetPool:
        network = ipaddress.IPv4Network(cidr, strict=True)
        if not network.prefixlen <= prefix <= 30:
            raise ValueError(f"node subnets /{prefix} do not fit in {cidr}")
        return cls(network, prefix)

    @property
    def size(self) -> int:
        return int(2 ** (self.prefix - self.network.prefixlen))

    def __contains__(self, value: object) -> bool:
        try:
            subnet = ipaddress.IPv4Network(str(value), strict=True)
        except ValueError:
            return False
        return subnet.prefixlen == self.prefix and subnet.subnet_of(self.network)

    def value_at(self, index: int) -> str:
        step = 2 ** (32 - self.prefix)
        return f"{self.network.network_address + index * step}/{self.prefix}"


@dataclass(frozen=True)
class PortPool:
    first: int
    last: int

    @classmethod
    def parse(cls, text: str) -> PortPool:
        low, _, high = text.partition("-")
        first, last = int(low), int(high or low)
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"not a port range: {text!r}")
        return cls(first, last)

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def __contains__(self, value: object) -> bool:
        try:
            return self.first <= int(str(value)) <= self.last
        except ValueError:
            return False

    def value_at(self, index: int) -> str:
        return str(self.first + index)


def free_values(pool: Pool, used: Container[str], *, start: int = 0) -> Iterator[tuple[int, str]]:
    """Free values (with their index) in pool order, from ``start``, wrapping around once.

    Starting after the last value handed out (not at the lowest free one) keeps a just-released
    address from going straight to a new holder while proxies may still hold its old rules.
    """
    size = pool.size
    for step in range(size):
        index = (start + step) % size
        value = pool.value_at(index)
        if value not in used:
            yield index, value
