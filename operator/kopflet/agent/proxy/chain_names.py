"""Names of every netfilter object of ours, fixed or derived from a service-port.

Derived names are a hash of what the object stands for, so the same service-port gets
the same chain on every node and after every restart: a restarted agent recognises
its own chains and rewrites them in place instead of duplicating them. Every name
carries our prefix; cleanup and stale-chain deletion touch nothing else.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Final

from kopflet.agent.proxy.model import ChainName, EndpointInfo, L4Protocol, ServicePortName

#: Fixed iptables chains start with this; cleanup removes every chain that does.
FIXED_PREFIX: Final = "KOPFLET-"
#: Per service-port and per endpoint iptables chains (short: names max out at 28 chars).
HASHED_PREFIX: Final = "KFL-"

SERVICES = ChainName("KOPFLET-SERVICES")
NODEPORTS = ChainName("KOPFLET-NODEPORTS")
EXTERNAL_SERVICES = ChainName("KOPFLET-EXTERNAL-SERVICES")
FORWARD = ChainName("KOPFLET-FORWARD")
POSTROUTING = ChainName("KOPFLET-POSTROUTING")
MARK_MASQ = ChainName("KOPFLET-MARK-MASQ")
CANARY = ChainName("KOPFLET-PROXY-CANARY")

#: The one nftables table of ours (family ``ip``).
NFT_TABLE: Final = "kopflet"
NFT_FAMILY: Final = "ip"

#: Packet mark bit asking POSTROUTING to masquerade (the bit kube-proxy uses).
MASQ_MARK: Final = 0x4000

#: Routes of ours carry this ``proto`` number, so cleanup finds them and only them.
ROUTE_PROTOCOL: Final = 147

#: Userspace mode puts the virtual IPs on this link of ours so they are local addresses.
VIP_LINK: Final = "kopflet-vip0"


# Every sync names every chain again: remember the names (hex, not base32, which is slow
# in Python; 64 bits are plenty for the chains of one node).
@functools.lru_cache(maxsize=1 << 17)
def _hash(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16].upper()


def _service_port_hash(name: ServicePortName, protocol: L4Protocol) -> str:
    return _hash(str(name), protocol.lower())


def _endpoint_hash(name: ServicePortName, protocol: L4Protocol, endpoint: EndpointInfo) -> str:
    return _hash(str(name), protocol.lower(), endpoint.address)


def service_chain(name: ServicePortName, protocol: L4Protocol) -> ChainName:
    return ChainName(f"{HASHED_PREFIX}SVC-{_service_port_hash(name, protocol)}")


def endpoint_chain(
    name: ServicePortName, protocol: L4Protocol, endpoint: EndpointInfo
) -> ChainName:
    return ChainName(f"{HASHED_PREFIX}SEP-{_endpoint_hash(name, protocol, endpoint)}")


def is_ours(chain: str) -> bool:
    return chain.startswith((FIXED_PREFIX, HASHED_PREFIX))


def is_hashed(chain: str) -> bool:
    return chain.startswith(HASHED_PREFIX)


# nftables: the table is ours, so names need no prefix; they still say what they are for.


def nft_service_chain(name: ServicePortName, protocol: L4Protocol) -> ChainName:
    return ChainName(f"svc-{_service_port_hash(name, protocol)}")


def nft_external_chain(name: ServicePortName, protocol: L4Protocol) -> ChainName:
    return ChainName(f"ext-{_service_port_hash(name, protocol)}")


def nft_endpoint_chain(
    name: ServicePortName, protocol: L4Protocol, endpoint: EndpointInfo
) -> ChainName:
    return ChainName(f"sep-{_endpoint_hash(name, protocol, endpoint)}")


def nft_affinity_set(
    name: ServicePortName, protocol: L4Protocol, endpoint: EndpointInfo, timeout: int
) -> ChainName:
    """A dynamic set of client addresses sticking to one endpoint.

    The timeout is part of the name: a set's timeout can't be changed in place, so a
    new timeout makes a new set and the old one is deleted as stale.
    """
    return ChainName(f"aff-{_hash(str(name), protocol.lower(), endpoint.address, str(timeout))}")
