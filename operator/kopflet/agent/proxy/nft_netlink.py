"""How many rules one nftables chain holds, asked of the kernel over netlink.

The canary check runs every few seconds and wants one number. ``nft list chain`` (1.0.6)
first fetches every set and map entry of the table -- seconds at 10,000 service-ports --
while a rule dump filtered by table and chain (``NFT_MSG_GETRULE`` with ``NLM_F_DUMP``)
costs what that one chain holds.

In the current network namespace it runs in-process; for another one, the agent runs
this file under ``nsenter`` (``python .../nft_netlink.py TABLE CHAIN``), which prints
the count. It needs nothing but the standard library.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWRULE = 6
NFT_MSG_GETRULE = 7
NFTA_RULE_TABLE = 1
NFTA_RULE_CHAIN = 2
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
NFPROTO_IPV4 = 2

_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
_NFGEN = struct.Struct("=BBH")  # struct nfgenmsg (res_id in network order; 0 here)

#: Bounds: one dump of one chain; a reply that never ends is an error, not a hang.
_TIMEOUT_SECONDS = 5.0
_MAX_MESSAGES = 1_000_000


def _attribute(kind: int, value: str) -> bytes:
    data = value.encode() + b"\0"
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


def dump_request(table: str, chain: str, *, seq: int = 1) -> bytes:
    """The ``NFT_MSG_GETRULE`` dump request for ``chain`` of the ip table ``table``."""
    payload = (
        _NFGEN.pack(NFPROTO_IPV4, 0, 0)
        + _attribute(NFTA_RULE_TABLE, table)
        + _attribute(NFTA_RULE_CHAIN, chain)
    )
    kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE
    return _HEADER.pack(_HEADER.size + len(payload), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + (
        payload
    )


def count_rules(replies: bytes) -> tuple[int, bool]:
    """Rules in a batch of reply messages, and whether the dump ended in it.

    Raises ``OSError`` for an error reply: a missing table or chain is ``ENOENT``.
    """
    rules, offset, done = 0, 0, False
    newrule = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE
    while offset + _HEADER.size <= len(replies):
        length, kind, _flags, _seq, _pid = _HEADER.unpack_from(replies, offset)
        if length < _HEADER.size:
            raise OSError(errno.EPROTO, "malformed netlink message")
        if kind == NLMSG_DONE:
            done = True
        elif kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", replies, offset + _HEADER.size)
            if code:
                raise OSError(-code, os.strerror(-code))
            done = True
        elif kind == newrule:
            rules += 1
        offset += (length + 3) & ~3
    return rules, done


def chain_rule_count(table: str, chain: str) -> int | None:
    """Rules in ``chain`` of the ip table ``table`` in this network namespace: 0 (or
    ``None``, as the kernel answers) if the table or the chain doesn't exist."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.settimeout(_TIMEOUT_SECONDS)
        sock.bind((0, 0))
        sock.send(dump_request(table, chain))
        total = 0
        for _ in range(_MAX_MESSAGES):
            try:
                rules, done = count_rules(sock.recv(1 << 16))
            except FileNotFoundError:
                return None
            total += rules
            if done:
                return total
    raise OSError(errno.EOVERFLOW, "netlink rule dump did not end")


def main(argv: list[str]) -> int:
    table, chain = argv
    count = chain_rule_count(table, chain)
    print("none" if count is None else count)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
