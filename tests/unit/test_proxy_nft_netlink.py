"""The netlink rule count behind the nftables canary, and the table filter of listings."""

from __future__ import annotations

import errno
import struct

import pytest

from kopflet.agent.proxy.netfilter_backend import _nft_table_block, nft_objects
from kopflet.agent.proxy.nft_netlink import count_rules, dump_request

pytestmark = pytest.mark.unit

NEWRULE = (10 << 8) | 6


def message(kind: int, payload: bytes = b"") -> bytes:
    length = 16 + len(payload)
    return struct.pack("=IHHII", length, kind, 2, 1, 0) + payload + b"\0" * (-length % 4)


def test_the_request_asks_for_a_dump_of_one_chain_of_one_table() -> None:
    request = dump_request("kopflet", "canary")
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", request)
    assert length == len(request) and length % 4 == 0
    assert kind == (10 << 8) | 7 and flags == 0x301 and (seq, pid) == (1, 0)
    assert request[16] == 2  # NFPROTO_IPV4
    assert b"kopflet\0" in request and b"canary\0" in request


def test_rules_are_counted_until_the_dump_ends() -> None:
    assert count_rules(message(NEWRULE, b"\1\2\3") + message(NEWRULE)) == (2, False)
    assert count_rules(message(NEWRULE) + message(3, b"\0" * 4)) == (1, True)
    assert count_rules(message(3)) == (0, True)


def test_an_error_reply_raises_and_an_ack_ends() -> None:
    with pytest.raises(FileNotFoundError):
        count_rules(message(2, struct.pack("=i", -errno.ENOENT) + b"\0" * 16))
    assert count_rules(message(2, struct.pack("=i", 0) + b"\0" * 16)) == (0, True)


def test_a_listing_of_a_family_keeps_only_our_tables_objects() -> None:
    listing = (
        "table ip nat {\n\tchain DOCKER {\n\t}\n}\n"
        "table ip kopflet {\n\tchain services {\n\t}\n\tset aff-1 {\n\t\ttype ipv4_addr\n\t}\n}\n"
        "table ip filter {\n\tchain FORWARD {\n\t}\n}\n"
    )
    ours = _nft_table_block(listing, "kopflet")
    assert nft_objects(ours) == {"chain": {"services"}, "set": {"aff-1"}, "map": set()}
    assert _nft_table_block(listing, "missing") == ""
