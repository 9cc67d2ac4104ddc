"""An in-memory iptables and nft for unit tests: restore semantics, no kernel.

The iptables one understands what our renderer writes: ``*table``, ``:CHAIN`` (create
or flush), ``-A``, ``-I CHAIN 1``, ``-D``, ``-X`` and ``COMMIT``; the nft one the
commands of our nftables renderer on our one table (see :class:`FakeNftBackend`). A
transaction that fails leaves everything as it was, as the real ones do. Tests can
inject failures and simulate an external flush.
"""

from __future__ import annotations

import copy
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from kopflet.agent.proxy.netfilter_backend import NetfilterError

BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
}
#: Targets that are not chains.
TARGETS = frozenset({"ACCEPT", "DROP", "RETURN", "REJECT", "DNAT", "SNAT", "MASQUERADE", "MARK"})


class _RecordingRestores:
    """What both fakes keep of ``restore``: every ruleset given, and injected failures."""

    restored: list[str]
    fail_restores: int

    def _record(self, ruleset: str) -> None:
        self.restored.append(ruleset)
        if self.fail_restores:
            self.fail_restores -= 1
            raise NetfilterError("injected failure")


class FakeIptablesBackend(_RecordingRestores):
    name = "iptables-fake"

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, list[str]]] = {
            t: {c: [] for c in chains} for t, chains in BUILTIN_CHAINS.items()
        }
        self.restored: list[str] = []
        self.fail_restores = 0
        self.save_calls = 0

    def restore(self, ruleset: str) -> None:
        self._record(ruleset)
        tables = copy.deepcopy(self.tables)
        table: dict[str, list[str]] | None = None
        for number, line in enumerate(ruleset.splitlines(), 1):
            try:
                table = self._apply_line(tables, table, line)
            except (KeyError, ValueError, IndexError) as exc:
                raise NetfilterError(f"line {number}: {line!r}: {exc!r}") from exc
        self.tables = tables

    def _apply_line(
        self,
        tables: dict[str, dict[str, list[str]]],
        table: dict[str, list[str]] | None,
        line: str,
    ) -> dict[str, list[str]] | None:
        if not line or line.startswith("#"):
            return table
        if line.startswith("*"):
            return tables[line[1:]]
        if line == "COMMIT":
            return None
        assert table is not None, "rule outside a table"
        if line.startswith(":"):
            table[line[1:].split()[0]] = []
            return table
        words = shlex.split(line)
        op, chain = words[0], words[1]
        if op == "-X":
            if chain not in table:
                raise KeyError(chain)
            if any(f"-j {chain}" in f" {r} " for rules in table.values() for r in rules):
                raise ValueError(f"chain {chain} is still referenced")
            del table[chain]
            return table
        rest = line.split(" ", 2)[2]
        if op == "-I":
            rest = rest.split(" ", 1)[1]  # the position: we only ever insert at 1
        target = words[words.index("-j") + 1] if "-j" in words else None
        if target is not None and target not in TARGETS and target not in table:
            raise KeyError(f"no chain/target {target}")
        if op == "-A":
            table[chain].append(rest)
        elif op == "-I":
            table[chain].insert(0, rest)
        elif op == "-D":
            table[chain].remove(rest)
        else:
            raise ValueError(op)
        return table

    def save(self, table: str) -> str:
        self.save_calls += 1
        chains = self.tables[table]
        lines = [f"*{table}"]
        lines += [f":{c} {'ACCEPT' if c in BUILTIN_CHAINS[table] else '-'} [0:0]" for c in chains]
        lines += [f"-A {c} {r}" for c, rules in chains.items() for r in rules]
        return "\n".join([*lines, "COMMIT"]) + "\n"

    def list_chain(self, table: str, chain: str) -> list[str] | None:
        rules = self.tables[table].get(chain)
        return None if rules is None else [f"-A {chain} {r}" for r in rules]

    def flush_table(self, table: str) -> None:
        """What ``iptables -t TABLE -F; iptables -t TABLE -X`` does to a node."""
        self.tables[table] = {c: [] for c in BUILTIN_CHAINS[table]}

    def rules(self, table: str, chain: str) -> list[str]:
        return list(self.tables[table].get(chain, []))


@dataclass
class NftTableState:
    """Our nft table as the kernel would hold it: chains with their rules, maps with
    their entries (``key -> verdict``), sets with their elements."""

    exists: bool = False
    chains: dict[str, list[str]] = field(default_factory=dict)
    maps: dict[str, dict[str, str]] = field(default_factory=dict)
    sets: dict[str, set[str]] = field(default_factory=dict)


_NFT_COMMAND = re.compile(
    r"^(?P<verb>add|flush|delete) (?P<kind>table|chain|rule|map|set|element) ip kopflet"
    r"(?: (?P<name>[\w-]+))?(?: (?P<rest>.*))?$"
)
_NFT_REFERENCE = re.compile(r"(?:goto|jump) ([\w-]+)|@([\w-]+)")
_NFT_BUILTIN = frozenset({"accept", "drop", "return", "continue"})


class FakeNftBackend(_RecordingRestores):
    """``nft -f`` on the table ``ip kopflet``, as far as our renderer goes.

    Checked like the kernel does: a rule or map entry may only name chains, sets and
    maps that exist; an entry can't be added under a key that holds another verdict,
    nor deleted if missing; a chain can't be deleted while it has rules or is named
    anywhere, a set while a rule looks it up.
    """

    name = "nft-fake"

    def __init__(self) -> None:
        self.table = NftTableState()
        self.restored: list[str] = []
        self.fail_restores = 0
        self.save_calls = 0

    def restore(self, ruleset: str) -> None:
        self._record(ruleset)
        table = copy.deepcopy(self.table)
        for number, line in enumerate(ruleset.splitlines(), 1):
            try:
                self._apply_line(table, line)
            except (KeyError, ValueError) as exc:
                raise NetfilterError(f"line {number}: {line!r}: {exc!r}") from exc
        self.table = table

    def _apply_line(self, t: NftTableState, line: str) -> None:
        if not line.strip():
            return
        m = _NFT_COMMAND.match(line)
        if m is None:
            raise ValueError("not understood")
        verb, kind, name, rest = m["verb"], m["kind"], m["name"], m["rest"] or ""
        if kind == "table":
            if verb != "add":
                raise ValueError(verb)
            t.exists = True
            return
        if not t.exists:
            raise KeyError("no table")
        assert name is not None
        if kind == "chain":
            if verb == "add":
                t.chains.setdefault(name, [])
            elif verb == "flush":
                t.chains[name].clear()
            else:
                if t.chains[name]:
                    raise ValueError(f"chain {name} has rules")
                if name in self._references(t):
                    raise ValueError(f"chain {name} is still referenced")
                del t.chains[name]
        elif kind == "rule":
            if verb != "add":
                raise ValueError(verb)
            self._check_references(t, rest)
            t.chains[name].append(rest)
        elif kind == "map":
            if verb == "add":
                t.maps.setdefault(name, {})
            elif verb == "flush":
                t.maps[name].clear()
            else:
                if name in self._references(t):
                    raise ValueError(f"map {name} is still referenced")
                del t.maps[name]
        elif kind == "set":
            if verb == "add":
                t.sets.setdefault(name, set())
            elif verb == "flush":
                t.sets[name].clear()
            else:
                if name in self._references(t):
                    raise ValueError(f"set {name} is still referenced")
                del t.sets[name]
        else:
            self._elements(t, verb, name, rest)

    def _elements(self, t: NftTableState, verb: str, name: str, rest: str) -> None:
        if not (rest.startswith("{ ") and rest.endswith(" }")):
            raise ValueError("elements not in braces")
        items = [i.strip() for i in rest[2:-2].split(",")]
        if name in t.sets:
            if verb == "add":
                t.sets[name].update(items)
            elif verb == "delete":
                for item in items:
                    t.sets[name].remove(item)
            else:
                raise ValueError(verb)
            return
        entries = t.maps[name]
        for item in items:
            if verb == "delete":
                del entries[item]
                continue
            if verb != "add":
                raise ValueError(verb)
            key, verdict = (x.strip() for x in item.split(" : "))
            self._check_references(t, verdict)
            if entries.get(key, verdict) != verdict:
                raise ValueError(f"{key} holds another verdict")
            entries[key] = verdict

    @staticmethod
    def _named(text: str) -> set[str]:
        return {a or b for a, b in _NFT_REFERENCE.findall(text)} - _NFT_BUILTIN

    def _check_references(self, t: NftTableState, text: str) -> None:
        for ref in self._named(text):
            if ref not in t.chains and ref not in t.maps and ref not in t.sets:
                raise KeyError(f"no chain/set/map {ref}")

    def _references(self, t: NftTableState) -> set[str]:
        found: set[str] = set()
        for rules in t.chains.values():
            for rule in rules:
                found |= self._named(rule)
        for entries in t.maps.values():
            for verdict in entries.values():
                found |= self._named(verdict)
        return found

    def save(self, table: str) -> str:
        """Enough of ``nft list table`` for our parser: the objects and their names."""
        self.save_calls += 1
        t = self.table
        if not t.exists:
            return ""
        lines = [f"table ip {table} {{"]
        lines += [f"\tset {s} {{\n\t}}" for s in t.sets]
        lines += [f"\tmap {m} {{\n\t}}" for m in t.maps]
        for chain, rules in t.chains.items():
            lines += [f"\tchain {chain} {{", *(f"\t\t{r}" for r in rules), "\t}"]
        return "\n".join([*lines, "}"]) + "\n"

    def list_chain(self, table: str, chain: str) -> list[str] | None:
        rules = self.table.chains.get(chain)
        return None if rules is None else list(rules)

    def rule_count(self, table: str, chain: str) -> int | None:
        rules = self.table.chains.get(chain)
        return None if rules is None else len(rules)

    def restore_each(self, rulesets: Sequence[str]) -> None:
        """One after another, in the order given: an order the real ones may also take."""
        for ruleset in rulesets:
            self.restore(ruleset)

    def flush_table(self) -> None:
        """What ``nft flush table ip kopflet`` does: every chain emptied, sets and maps
        too; the objects stay."""
        for rules in self.table.chains.values():
            rules.clear()
        for entries in self.table.maps.values():
            entries.clear()
        for elements in self.table.sets.values():
            elements.clear()
