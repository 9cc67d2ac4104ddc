"""``kopflet agent --cleanup``: remove every chain, table, route and link of ours.

Ours, and nothing else: iptables chains with our prefixes (in both the nft and the
legacy variant, whichever a previous run used) and the rules that jump into them,
the nftables table ``ip kopflet``, routes with our protocol number and the link of
virtual IPs. Each part is attempted even if another fails.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field

from kopflet.agent.proxy import chain_names as names
from kopflet.agent.proxy.commands import CommandError, CommandRunner
from kopflet.agent.proxy.host_routes import HostRoutes
from kopflet.agent.proxy.iptables_render import TABLES
from kopflet.agent.proxy.netfilter_backend import (
    IPTABLES_VARIANTS,
    IptablesBackend,
    NetfilterError,
    NftablesBackend,
    iptables_chains,
    iptables_rules,
)
from kopflet.agent.proxy.userspace_proxier import VipLink

_JUMP = re.compile(r" -[jg] (\S+)")


@dataclass
class CleanupReport:
    removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def render_iptables_cleanup(saved: dict[str, str]) -> str:
    """``iptables-restore --noflush`` input deleting every chain of ours and every rule
    elsewhere that jumps into one; empty if there is nothing of ours. Pure."""
    out: list[str] = []
    for table in TABLES:
        text = saved.get(table, "")
        ours = sorted(c for c in iptables_chains(text) if names.is_ours(c))
        jumps_in = [
            rule
            for rule in iptables_rules(text)
            if not names.is_ours(rule.split()[1])
            and (m := _JUMP.search(rule)) is not None
            and names.is_ours(m.group(1))
        ]
        if not ours and not jumps_in:
            continue
        out.append(f"*{table}")
        out += [f":{chain} - [0:0]" for chain in ours]  # flushes them
        out += ["-D " + rule.removeprefix("-A ") for rule in jumps_in]
        out += [f"-X {chain}" for chain in ours]
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def cleanup_all(runner: CommandRunner | None = None) -> CleanupReport:
    runner = runner or CommandRunner()
    report = CleanupReport()
    for variant in IPTABLES_VARIANTS:
        if shutil.which(f"iptables-{variant}-restore") is None:
            continue
        backend = IptablesBackend(variant=variant, runner=runner)
        try:
            ruleset = render_iptables_cleanup({t: backend.save(t) for t in TABLES})
            if ruleset:
                backend.restore(ruleset)
                report.removed.append(f"iptables-{variant} chains")
        except NetfilterError as exc:
            report.errors.append(f"iptables-{variant}: {exc}")
    nft = NftablesBackend(runner)
    try:
        if shutil.which("nft") is not None and nft.save():
            nft.delete_table()
            report.removed.append(f"nftables table {names.NFT_FAMILY} {names.NFT_TABLE}")
    except (NetfilterError, CommandError) as exc:
        report.errors.append(f"nftables: {exc}")
    try:
        errors = HostRoutes(runner).cleanup()
        report.errors += [f"route: {e}" for e in errors]
        report.removed.append("host subnet routes")
    except (CommandError, ValueError) as exc:
        report.errors.append(f"routes: {exc}")
    link = VipLink(runner)
    try:
        if link.exists():
            link.delete()
            report.removed.append(f"link {link.name}")
    except CommandError as exc:
        report.errors.append(f"link: {exc}")
    return report
