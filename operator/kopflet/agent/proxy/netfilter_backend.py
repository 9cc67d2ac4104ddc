"""The transport boundary of the netfilter modes: apply a ruleset, read one back.

The proxiers render text and hand it to a :class:`NetfilterBackend`; the real ones run
``iptables-restore``/``iptables-save`` or ``nft``, the fake in ``fake_backend`` keeps the
rules in memory. Nothing above this module runs a netfilter command.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, Protocol

from kopflet.agent.proxy import chain_names as names
from kopflet.agent.proxy import nft_netlink
from kopflet.agent.proxy.commands import RULESET_TIMEOUT, CommandError, CommandRunner

IptablesVariant = Literal["nft", "legacy"]
IPTABLES_VARIANTS: tuple[IptablesVariant, ...] = ("nft", "legacy")


class NetfilterError(RuntimeError):
    """Applying or reading rules failed; the next sync must be a full one."""


class NetfilterBackend(Protocol):
    """``table`` is ``nat``/``filter`` for iptables and our table's name for nft."""

    @property
    def name(self) -> str: ...

    def restore(self, ruleset: str) -> None:
        """Apply ``ruleset`` in one transaction, leaving everything it doesn't name alone."""
        ...

    def save(self, table: str) -> str:
        """The table as its tool prints it; empty if it doesn't exist."""
        ...

    def list_chain(self, table: str, chain: str) -> list[str] | None:
        """The rules of one chain, or ``None`` if the chain doesn't exist."""
        ...


class NftBackend(NetfilterBackend, Protocol):
    def rule_count(self, table: str, chain: str) -> int | None:
        """How many rules one chain holds (0 or ``None`` if it doesn't exist), cheaply."""
        ...

    def restore_each(self, rulesets: Sequence[str]) -> None:
        """Apply each ruleset in a transaction of its own, all at the same time; raises
        if any failed (the others may have been applied)."""
        ...


class IptablesBackend:
    """``iptables-restore --noflush`` of the variant (nft or legacy) the node's Docker uses."""

    def __init__(self, *, variant: IptablesVariant, runner: CommandRunner | None = None) -> None:
        self.variant: IptablesVariant = variant
        self._runner = runner or CommandRunner()

    @property
    def name(self) -> str:
        return f"iptables-{self.variant}"

    def _tool(self, suffix: str = "") -> str:
        return f"iptables-{self.variant}{suffix}"

    def restore(self, ruleset: str) -> None:
        # --wait: legacy iptables serialises writers with a lock Docker also takes.
        args = [self._tool("-restore"), "--noflush", "--wait", "5"]
        try:
            self._runner.run(args, stdin=ruleset, timeout=RULESET_TIMEOUT)
        except CommandError as exc:
            raise NetfilterError(str(exc)) from exc

    def save(self, table: str) -> str:
        try:
            if self.variant == "legacy" and table not in self._legacy_tables():
                # Naming a legacy table loads it into the namespace: reading must not
                # create what wasn't there.
                return ""
            args = [self._tool("-save"), "-t", table]
            return self._runner.run(args, timeout=RULESET_TIMEOUT).stdout
        except CommandError as exc:
            raise NetfilterError(str(exc)) from exc

    def _legacy_tables(self) -> set[str]:
        done = self._runner.run(["cat", "/proc/net/ip_tables_names"], check=False)
        return set(done.stdout.split()) if done.returncode == 0 else set()

    def list_chain(self, table: str, chain: str) -> list[str] | None:
        done = self._runner.run(
            [self._tool(), "--wait", "5", "-t", table, "-S", chain], check=False
        )
        if done.returncode != 0:
            return None
        return [line for line in done.stdout.splitlines() if line.startswith("-A ")]

    def delete_rule(self, table: str, rule: str) -> None:
        """Delete one rule given as ``-A CHAIN spec`` (the form ``iptables-save`` prints)."""
        ruleset = f"*{table}\n-D {rule.removeprefix('-A ')}\nCOMMIT\n"
        self.restore(ruleset)


_NFT_TABLE = f"{names.NFT_FAMILY} {names.NFT_TABLE}"


class NftablesBackend:
    """``nft -f -`` on the one table of ours."""

    name = "nftables"

    def __init__(self, runner: CommandRunner | None = None) -> None:
        self._runner = runner or CommandRunner()

    def restore(self, ruleset: str) -> None:
        try:
            self._runner.run(["nft", "-f", "-"], stdin=ruleset, timeout=RULESET_TIMEOUT)
        except CommandError as exc:
            raise NetfilterError(str(exc)) from exc

    def restore_each(self, rulesets: Sequence[str]) -> None:
        # One nft process each: parsing is nft's cost, and it takes one core a process.
        # The kernel takes their commits one at a time.
        with ThreadPoolExecutor(max_workers=max(1, len(rulesets))) as pool:
            done = [pool.submit(self.restore, r) for r in rulesets]
        for future in done:
            future.result()

    def save(self, table: str = names.NFT_TABLE) -> str:
        """The table's chains, sets and maps, without rules or entries; empty if the table
        doesn't exist.

        ``nft list table`` (even with ``-t``) fetches every set and map entry, seconds for
        the 200,000 of 10,000 service-ports x 10 endpoints; the listings of chains and of
        sets and maps (with ``-t``) fetch none, and the proxier wants only the names.
        """
        listings = []
        for kind in ("chains", "sets", "maps"):
            done = self._runner.run(
                ["nft", "-t", "list", kind, names.NFT_FAMILY],
                check=False,
                timeout=RULESET_TIMEOUT,
            )
            if done.returncode != 0:
                raise NetfilterError(done.stderr.strip())
            listings.append(_nft_table_block(done.stdout, table))
        return "".join(listings)

    def rule_count(self, table: str, chain: str) -> int | None:
        if self._runner.netns is None:
            return nft_netlink.chain_rule_count(table, chain)
        # By path: the module needs only the standard library, not kopflet on the path.
        try:
            done = self._runner.run([sys.executable, nft_netlink.__file__, table, chain])
        except CommandError as exc:
            raise NetfilterError(str(exc)) from exc
        answer = done.stdout.strip()
        return None if answer == "none" else int(answer)

    def list_chain(self, table: str, chain: str) -> list[str] | None:
        done = self._runner.run(
            ["nft", "list", "chain", names.NFT_FAMILY, table, chain], check=False
        )
        if done.returncode != 0:
            return None
        lines = [line.strip() for line in done.stdout.splitlines()]
        return [ln for ln in lines if ln and not ln.startswith(("table ", "chain ", "}", "type "))]

    def delete_table(self) -> None:
        if self.save():
            self.restore(f"delete table {_NFT_TABLE}\n")


_CHAIN_LINE = re.compile(r"^:(\S+) ")


def iptables_chains(saved: str) -> set[str]:
    """Chain names declared in one table's ``iptables-save`` output."""
    return {m.group(1) for line in saved.splitlines() if (m := _CHAIN_LINE.match(line))}


def iptables_rules(saved: str) -> list[str]:
    return [line for line in saved.splitlines() if line.startswith("-A ")]


_NFT_OBJECT = re.compile(r"^\s*(chain|set|map) (\S+) \{")


def _nft_table_block(listing: str, table: str) -> str:
    """The ``table <family> <table> { ... }`` blocks of ``table`` in a listing of a family."""
    kept: list[str] = []
    inside = False
    header = f"table {names.NFT_FAMILY} {table} {{"
    for line in listing.splitlines(keepends=True):
        if line.startswith("table "):
            inside = line.rstrip() == header
        if inside:
            kept.append(line)
    return "".join(kept)


def nft_objects(listing: str) -> dict[str, set[str]]:
    """``{"chain": {...}, "set": {...}, "map": {...}}`` of an ``nft list table`` output."""
    found: dict[str, set[str]] = {"chain": set(), "set": set(), "map": set()}
    for line in listing.splitlines():
        if m := _NFT_OBJECT.match(line):
            found[m.group(1)].add(m.group(2))
    return found


def detect_iptables_variant(runner: CommandRunner | None = None) -> IptablesVariant:
    """The iptables variant whose tables hold Docker's chains, as Docker picked it.

    Rules of both variants apply to every packet, but each tool sees only its own:
    ours must live where the node's other rules live, or ``iptables-save`` on the
    node would show half the picture. Failing Docker's, the variant already holding
    ours (a restart), then nft, the default of current distributions.
    """
    runner = runner or CommandRunner()
    saved: dict[IptablesVariant, str] = {}
    for variant in IPTABLES_VARIANTS:
        try:
            done = runner.run([f"iptables-{variant}-save"], check=False)
        except CommandError:  # not installed
            saved[variant] = ""
            continue
        saved[variant] = done.stdout if done.returncode == 0 else ""
    for marker in (":DOCKER", f":{names.FIXED_PREFIX}"):
        holders = [v for v in IPTABLES_VARIANTS if marker in saved[v]]
        if len(holders) == 1:
            return holders[0]
    return "nft"
