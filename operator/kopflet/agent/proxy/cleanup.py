"""``kopflet agent --cleanup``: remove every chain, table, route and link of ours.

Ours, and nothing else: iptables chains with our prefixes (in both the nft and the
legacy variant, whichever a previous run used) and the rules that jump into them,
the nftables table ``ip kopflet``, routes with our protocol number and the link of
virtual IPs. Each part is attempted even if another fails.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Set
from dataclasses import dataclass, field

from kopflet.agent.proxy import chain_names as names
from kopflet.agent.proxy.commands import CommandError, CommandRunner
from kopflet.agent.proxy.host_routes import HostRoutes
from kopflet.agent.proxy.iptables_render import TABLES
from kopflet.agent.proxy.model import ProxyMode
from kopflet.agent.proxy.netfilter_backend import (
    IPTABLES_VARIANTS,
    IptablesBackend,
    NetfilterError,
    NftablesBackend,
    iptables_chains,
    iptables_rules,
    nft_objects,
)
from kopflet.agent.proxy.userspace_proxier import VipLink

_JUMP = re.compile(r" -[jg] (\S+)")


@dataclass
class CleanupReport:
    removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def render_iptables_cleanup(saved: Mapping[str, str], *, keep: Set[str] = frozenset()) -> str:
    """``iptables-restore --noflush`` input deleting every chain of ours (but ``keep``)
    and every rule elsewhere that jumps into one; empty if there is nothing. Pure."""
    out: list[str] = []
    for table in TABLES:
        text = saved.get(table, "")
        ours = sorted(c for c in iptables_chains(text) if names.is_ours(c) and c not in keep)
        # Rules outside the chains being removed that jump into one (hooks, or a kept
        # chain of ours): deleted one by one, or the chains couldn't be.
        jumps_in = [
            rule
            for rule in iptables_rules(text)
            if rule.split()[1] not in ours
            and (m := _JUMP.search(rule)) is not None
            and m.group(1) in ours
        ]
        if not ours:
            continue
        out.append(f"*{table}")
        out += [f":{chain} - [0:0]" for chain in ours]  # flushes them
        out += ["-D " + rule.removeprefix("-A ") for rule in jumps_in]
        out += [f"-X {chain}" for chain in ours]
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


_POLICY = re.compile(r"^:(\S+) (ACCEPT|DROP) ")


def builtin_chains_left_empty(
    saved: Mapping[str, str], *, keep: Set[str] = frozenset()
) -> list[tuple[str, str]]:
    """Built-in chains (policy ACCEPT) whose only rules are jumps into chains of ours
    being removed. iptables-nft creates a built-in chain in the kernel the first time
    a rule goes into it, so these are the ones our hooks brought into being. Pure."""
    empty = []
    for table in TABLES:
        text = saved.get(table, "")
        accepting = {
            m.group(1)
            for line in text.splitlines()
            if (m := _POLICY.match(line)) and m.group(2) == "ACCEPT"
        }
        rules = iptables_rules(text)
        for chain in sorted(accepting):
            own = [r for r in rules if r.split()[1] == chain]
            targets = [m.group(1) if (m := _JUMP.search(r)) else "" for r in own]
            if own and all(names.is_ours(t) and t not in keep for t in targets):
                empty.append((table, chain))
    return empty


def _cleanup_iptables(runner: CommandRunner, report: CleanupReport, keep: Set[str]) -> None:
    for variant in IPTABLES_VARIANTS:
        if shutil.which(f"iptables-{variant}-restore") is None:
            continue
        backend = IptablesBackend(variant=variant, runner=runner)
        try:
            saved = {t: backend.save(t) for t in TABLES}
            ruleset = render_iptables_cleanup(saved, keep=keep)
            if ruleset:
                backend.restore(ruleset)
                report.removed.append(f"iptables-{variant} chains")
        except NetfilterError as exc:
            report.errors.append(f"iptables-{variant}: {exc}")
            continue
        if variant == "nft" and ruleset and shutil.which("nft") is not None:
            _delete_emptied_base_chains(runner, report, builtin_chains_left_empty(saved, keep=keep))


def _delete_emptied_base_chains(
    runner: CommandRunner, report: CleanupReport, chains: list[tuple[str, str]]
) -> None:
    """Leave ``nft list ruleset`` as it was before us, not just ``iptables-save``."""
    for table, chain in chains:
        done = runner.run(["nft", "delete", "chain", "ip", table, chain], check=False)
        if done.returncode != 0:
            report.errors.append(f"nft delete chain ip {table} {chain}: {done.stderr.strip()}")
    for table in sorted({t for t, _ in chains}):
        listing = runner.run(["nft", "list", "table", "ip", table], check=False).stdout
        if listing and not nft_objects(listing)["chain"]:
            runner.run(["nft", "delete", "table", "ip", table], check=False)


def _cleanup_nftables(runner: CommandRunner, report: CleanupReport) -> None:
    if shutil.which("nft") is None:
        return
    nft = NftablesBackend(runner)
    try:
        if nft.save():
            nft.delete_table()
            report.removed.append(f"nftables table {names.NFT_FAMILY} {names.NFT_TABLE}")
    except (NetfilterError, CommandError) as exc:
        report.errors.append(f"nftables: {exc}")


def _cleanup_vip_link(runner: CommandRunner, report: CleanupReport) -> None:
    link = VipLink(runner)
    try:
        if link.exists():
            link.delete()
            report.removed.append(f"link {link.name}")
    except CommandError as exc:
        report.errors.append(f"link: {exc}")


def cleanup_all(runner: CommandRunner | None = None) -> CleanupReport:
    runner = runner or CommandRunner()
    report = CleanupReport()
    _cleanup_iptables(runner, report, keep=frozenset())
    _cleanup_nftables(runner, report)
    try:
        errors = HostRoutes(runner).cleanup()
        report.errors += [f"route: {e}" for e in errors]
        report.removed.append("host subnet routes")
    except (CommandError, ValueError) as exc:
        report.errors.append(f"routes: {exc}")
    _cleanup_vip_link(runner, report)
    return report


def cleanup_other_modes(mode: ProxyMode, runner: CommandRunner | None = None) -> CleanupReport:
    """What a previous run in another mode left behind (a node switched modes), like
    kube-proxy does at start. Routes are shared by every mode and stay."""
    runner = runner or CommandRunner()
    report = CleanupReport()
    if mode != "iptables":
        # The nftables mode keeps its forwarding chain in Docker's iptables.
        keep = frozenset({names.FORWARD}) if mode == "nftables" else frozenset()
        _cleanup_iptables(runner, report, keep=keep)
    if mode != "nftables":
        _cleanup_nftables(runner, report)
    if mode != "userspace":
        _cleanup_vip_link(runner, report)
    return report
