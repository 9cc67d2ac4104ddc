"""``kopflet agent --cleanup`` in a node's network namespace: ours gone, the rest untouched.

The proxy's own tests cover every mode's leftovers; this one runs the command line a node's
operator would run, in a namespace of its own (never a cluster node's: others' tests use them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from support import missing_infrastructure

pytestmark = pytest.mark.integration


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        missing_infrastructure("needs root (a network namespace)")
    for tool in ("ip", "iptables-save", "nsenter"):
        if shutil.which(tool) is None:
            missing_infrastructure(f"{tool} is not installed")
    name = f"kopflet-cleanup-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def in_ns(netns: str, *argv: str, check: bool = True) -> str:
    done = subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns}", "--", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {done.stderr}")
    return done.stdout


def test_agent_cleanup_removes_our_chains_and_routes_and_keeps_everyone_elses(netns: str) -> None:
    setup = [
        ["ip", "link", "set", "lo", "up"],
        ["ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"],
        ["ip", "link", "set", "d1", "up"],
        ["ip", "addr", "add", "192.168.250.1/24", "dev", "d0"],
        ["ip", "link", "set", "d0", "up"],
        # A node's host-subnet route (ours: proto 147) and someone else's.
        ["ip", "route", "add", "10.244.9.0/24", "via", "192.168.250.2", "proto", "147"],
        ["ip", "route", "add", "10.98.0.0/16", "via", "192.168.250.2"],
        # Our service chain hooked into PREROUTING, and someone else's beside it.
        ["iptables", "-t", "nat", "-N", "KOPFLET-SERVICES"],
        ["iptables", "-t", "nat", "-A", "KOPFLET-SERVICES", "-d", "10.96.0.10/32", "-j", "RETURN"],
        ["iptables", "-t", "nat", "-A", "PREROUTING", "-j", "KOPFLET-SERVICES"],
        ["iptables", "-t", "nat", "-N", "SOMEONE-ELSE"],
        ["iptables", "-t", "nat", "-A", "PREROUTING", "-j", "SOMEONE-ELSE"],
    ]
    for argv in setup:
        in_ns(netns, *argv)
    assert "KOPFLET-SERVICES" in in_ns(netns, "iptables-save", "-t", "nat")

    done = subprocess.run(
        [
            "nsenter",
            f"--net=/run/netns/{netns}",
            "--",
            sys.executable,
            "-m",
            "kopflet",
            "agent",
            "--cleanup",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "removed:" in done.stdout

    nat = in_ns(netns, "iptables-save", "-t", "nat")
    assert "KOPFLET" not in nat, nat
    assert ":SOMEONE-ELSE" in nat and "-A PREROUTING -j SOMEONE-ELSE" in nat
    routes = in_ns(netns, "ip", "route")
    assert "10.244.9.0/24" not in routes and "10.98.0.0/16 via 192.168.250.2" in routes
    # Nothing of ours left: a second run finds nothing and still succeeds.
    again = subprocess.run(
        [
            "nsenter",
            f"--net=/run/netns/{netns}",
            "--",
            sys.executable,
            "-m",
            "kopflet",
            "agent",
            "--cleanup",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == 0, again.stderr
