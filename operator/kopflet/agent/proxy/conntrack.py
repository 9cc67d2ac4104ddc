"""UDP conntrack flushing: stale entries would keep sending datagrams to dead endpoints.

TCP connections to a removed endpoint fail and are retried by the client; a UDP
"connection" is a conntrack entry that keeps DNATing a client's datagrams to the
removed endpoint for as long as the client keeps talking. So for UDP service-ports:
entries DNATed to a removed endpoint are deleted, and so are the entries to a service
that just got its first endpoint (they were made while it had none). Planning is pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kopflet.agent.proxy.change_tracker import Change
from kopflet.agent.proxy.commands import CommandError, CommandRunner
from kopflet.agent.proxy.model import ServicePortInfo, ServicePortName


@dataclass(frozen=True, order=True)
class ConntrackFlush:
    """Delete UDP entries matching every given field."""

    orig_dst: str | None = None
    orig_port_dst: int | None = None
    dst_nat: str | None = None

    def argv(self) -> list[str]:
        args = ["conntrack", "-D", "-p", "udp"]
        if self.orig_dst is not None:
            args += ["--orig-dst", self.orig_dst]
        if self.orig_port_dst is not None:
            args += ["--orig-port-dst", str(self.orig_port_dst)]
        if self.dst_nat is not None:
            args += ["--dst-nat", self.dst_nat]
        return args


def plan_conntrack_flushes(
    changes: Mapping[ServicePortName, Change[ServicePortInfo]],
) -> list[ConntrackFlush]:
    flushes: set[ConntrackFlush] = set()
    for change in changes.values():
        old, new = change.previous, change.current
        if old is not None and old.protocol == "UDP":
            still = (
                {e.ip for e in new.endpoints}
                if new is not None and new.protocol == "UDP"
                else set()
            )
            for endpoint in old.endpoints:
                if endpoint.ip in still:
                    continue
                flushes.add(ConntrackFlush(orig_dst=old.cluster_ip, dst_nat=endpoint.ip))
                if old.node_port is not None:
                    flushes.add(ConntrackFlush(orig_port_dst=old.node_port, dst_nat=endpoint.ip))
        if new is not None and new.protocol == "UDP" and new.endpoints:
            had = old is not None and old.protocol == "UDP" and bool(old.endpoints)
            if not had:
                flushes.add(ConntrackFlush(orig_dst=new.cluster_ip, orig_port_dst=new.port))
                if new.node_port is not None:
                    flushes.add(ConntrackFlush(orig_port_dst=new.node_port))
    return sorted(flushes, key=lambda f: (f.orig_dst or "", f.orig_port_dst or 0, f.dst_nat or ""))


def flush_conntrack(
    flushes: Iterable[ConntrackFlush], runner: CommandRunner | None = None
) -> list[CommandError]:
    runner = runner or CommandRunner()
    errors = []
    for flush in flushes:
        done = runner.run(flush.argv(), check=False)
        # conntrack exits 1 when nothing matched, which is the usual case.
        if done.returncode not in (0, 1):
            errors.append(CommandError(runner.argv(flush.argv()), done.returncode, done.stderr))
    return errors
