"""An in-memory iptables for unit tests: ``iptables-restore --noflush`` semantics, no kernel.

It understands what our renderer writes: ``*table``, ``:CHAIN`` (create or flush),
``-A``, ``-I CHAIN 1``, ``-D``, ``-X`` and ``COMMIT``; a transaction that fails leaves
every table as it was, as the real one does. Tests can inject failures and simulate
an external flush.
"""

from __future__ import annotations

import copy
import shlex

from kopflet.agent.proxy.netfilter_backend import NetfilterError

BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
}
#: Targets that are not chains.
TARGETS = frozenset({"ACCEPT", "DROP", "RETURN", "REJECT", "DNAT", "SNAT", "MASQUERADE", "MARK"})


class FakeIptablesBackend:
    name = "iptables-fake"

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, list[str]]] = {
            t: {c: [] for c in chains} for t, chains in BUILTIN_CHAINS.items()
        }
        self.restored: list[str] = []
        self.fail_restores = 0
        self.save_calls = 0

    def restore(self, ruleset: str) -> None:
        self.restored.append(ruleset)
        if self.fail_restores:
            self.fail_restores -= 1
            raise NetfilterError("injected failure")
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
