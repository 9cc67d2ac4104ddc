"""iptables mode: render the ruleset, apply it in one ``iptables-restore --noflush``.

Full sync: read what is programmed (``iptables-save``) to find hooks that are missing
and chains of ours nobody needs any more, then write every chain of ours. Partial
sync: trust what the last successful sync left, and write only what changed: the
chains of the service-ports that changed, ``-X`` of their chains nobody needs any more,
and those shared chains (``KOPFLET-SERVICES``, ``KOPFLET-NODEPORTS``, ...) whose rules
differ from what the last successful sync wrote, known by a digest per chain. An
endpoint change of an existing service-port thus costs that service-port's chains, not
the size of the ruleset. A failure forgets that trust, so the next sync is full.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Set

from kopflet.agent.proxy import chain_names as names
from kopflet.agent.proxy.iptables_render import (
    FILTER,
    HOOKS,
    TABLES,
    Hook,
    RenderedRuleset,
    ServicePortRules,
    SharedChain,
    render_iptables_ruleset,
)
from kopflet.agent.proxy.model import ChainName, ProxyMode, ServicePortName
from kopflet.agent.proxy.netfilter_backend import (
    NetfilterBackend,
    iptables_chains,
    iptables_rules,
)
from kopflet.agent.proxy.proxier import ProxyState, SyncOutcome


def _is_jump(rule: str, hook: Hook) -> bool:
    return rule.startswith(f"-A {hook.chain} ") and rule.endswith(f"-j {hook.target}")


def hooks_out_of_place(saved: Mapping[str, str]) -> dict[Hook, int]:
    """Hooks that are not the one first rule of their built-in chain, per ``iptables-save``
    output, each with how many copies of it are there now (to delete before inserting).

    First, not merely present: Docker inserts its own rules at the top of FORWARD when it
    creates a network, and its ``-i <bridge> ! -o <bridge> -j ACCEPT`` ahead of our jump
    would let an instance's connection to a service without endpoints slip past the
    REJECT. Matched on chain and target only: ``iptables-save`` reorders match options,
    so the saved text of a rule is not the text we wrote.
    """
    out_of_place: dict[Hook, int] = {}
    for hook in HOOKS:
        rules = [
            r
            for r in iptables_rules(saved.get(hook.table, ""))
            if r.startswith(f"-A {hook.chain} ")
        ]
        copies = sum(1 for r in rules if _is_jump(r, hook))
        if copies != 1 or not _is_jump(rules[0], hook):
            out_of_place[hook] = copies
    return out_of_place


def first_rule_is_hook(rules: list[str] | None, hook: Hook) -> bool:
    return rules is not None and len(rules) > 0 and _is_jump(rules[0], hook)


class IptablesProxier:
    def __init__(self, backend: NetfilterBackend) -> None:
        self.backend = backend
        # Chains of ours that the last successful sync left programmed, and the rule
        # count of every service-port it wrote: None until a full sync succeeded.
        self._programmed: Mapping[str, frozenset[ChainName]] | None = None
        self._rules_by_service: dict[ServicePortName, int] = {}
        # Digests of the shared chains' rules, and what every service-port put in them
        # (and its own chains), as the last successful sync left them.
        self._shared: Mapping[SharedChain, str] = {}
        self._by_service: Mapping[ServicePortName, ServicePortRules] = {}
        self.last_ruleset: RenderedRuleset | None = None

    @property
    def mode(self) -> ProxyMode:
        return "iptables"

    async def sync(
        self, state: ProxyState, *, changed: Set[ServicePortName], full: bool
    ) -> SyncOutcome:
        return await asyncio.to_thread(self.sync_blocking, state, changed=changed, full=full)

    def sync_blocking(
        self, state: ProxyState, *, changed: Set[ServicePortName], full: bool
    ) -> SyncOutcome:
        full = full or self._programmed is None
        try:
            rendered = self._render(state, changed=changed, full=full)
            if rendered.text:  # empty: a partial sync with nothing to write
                self.backend.restore(rendered.text)
        except BaseException:
            self._programmed = None
            self._shared = {}
            self._by_service = {}
            raise
        self.last_ruleset = rendered
        self._programmed = rendered.chains
        self._shared = rendered.shared_digests
        self._by_service = rendered.by_service
        if full:
            self._rules_by_service = {}
        self._rules_by_service.update(rendered.rules_by_service)
        for name in set(self._rules_by_service) - set(state.service_ports):
            del self._rules_by_service[name]
        total = rendered.fixed_rule_count + sum(self._rules_by_service.values())
        return SyncOutcome(full=full, rules_programmed=total)

    def _render(
        self, state: ProxyState, *, changed: Set[ServicePortName], full: bool
    ) -> RenderedRuleset:
        if full or self._programmed is None:
            saved = {table: self.backend.save(table) for table in TABLES}
            stale = {
                table: {ChainName(c) for c in iptables_chains(saved[table]) if names.is_hashed(c)}
                for table in TABLES
            }
            to_place = hooks_out_of_place(saved)
            return render_iptables_ruleset(
                state.service_ports,
                instance_cidrs=state.instance_cidrs,
                stale_chains=stale,
                missing_hooks=list(to_place),
                hook_copies=to_place,
            )
        skip = {
            name
            for name in state.service_ports
            if name not in changed and name in self._rules_by_service
        }
        return render_iptables_ruleset(
            state.service_ports,
            instance_cidrs=state.instance_cidrs,
            skip=skip,
            # Every chain of ours the last sync left: the fixed ones are always rendered,
            # so only hashed ones can be stale.
            stale_chains=self._programmed,
            missing_hooks=(),
            programmed_shared=self._shared,
            programmed_by_service=self._by_service,
        )

    async def canary_intact(self) -> bool:
        return await asyncio.to_thread(self.canary_intact_blocking)

    def canary_intact_blocking(self) -> bool:
        """Our canary chains are there, and our FORWARD hook still comes first.

        FORWARD is where another program is known to put rules ahead of ours (Docker, when it
        creates a network, with an ACCEPT that would skip our REJECT). The other hooks are
        reordered by the periodic full sync only: checking them every few seconds could turn
        a firewall tool that keeps inserting at the top into a full resync every few seconds.
        """
        for table in TABLES:
            rules = self.backend.list_chain(table, names.CANARY)
            if not rules or not any("kopflet canary" in r for r in rules):
                return False
        for hook in HOOKS:
            if (hook.table, hook.chain) == (FILTER, "FORWARD") and not first_rule_is_hook(
                self.backend.list_chain(FILTER, hook.chain), hook
            ):
                return False
        return True

    async def close(self) -> None:
        return None
