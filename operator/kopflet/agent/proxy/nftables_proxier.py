"""nftables mode: render our table, apply it in one ``nft -f`` transaction.

Same contract as the iptables mode: a full sync lists the table to find stale chains
and sets, a partial one trusts what the last successful sync left, any failure makes
the next one full.

On a node whose Docker keeps its rules in iptables, ``forward_backend`` also gets the
one iptables chain ``KOPFLET-FORWARD``: Docker's FORWARD policy is DROP, and an accept
in our table can't overrule a drop in another (every table has its say).
"""

from __future__ import annotations

import asyncio
from collections.abc import Set

from kopflet.agent.proxy import chain_names as names
from kopflet.agent.proxy.iptables_proxier import hooks_out_of_place
from kopflet.agent.proxy.iptables_render import FORWARD_HOOKS, render_iptables_forward_ruleset
from kopflet.agent.proxy.model import ChainName, ProxyMode, ServicePortName
from kopflet.agent.proxy.netfilter_backend import NetfilterBackend, nft_objects
from kopflet.agent.proxy.nftables_render import (
    CANARY_CHAIN,
    FIXED_SETS,
    RenderedNftRuleset,
    render_nftables_ruleset,
)
from kopflet.agent.proxy.proxier import ProxyState, SyncOutcome


class NftablesProxier:
    def __init__(
        self, backend: NetfilterBackend, *, forward_backend: NetfilterBackend | None = None
    ) -> None:
        self.backend = backend
        self.forward_backend = forward_backend
        self._programmed: RenderedNftRuleset | None = None
        self._rules_by_service: dict[ServicePortName, int] = {}

    @property
    def mode(self) -> ProxyMode:
        return "nftables"

    async def sync(
        self, state: ProxyState, *, changed: Set[ServicePortName], full: bool
    ) -> SyncOutcome:
        return await asyncio.to_thread(self.sync_blocking, state, changed=changed, full=full)

    def sync_blocking(
        self, state: ProxyState, *, changed: Set[ServicePortName], full: bool
    ) -> SyncOutcome:
        full = full or self._programmed is None
        try:
            if self.forward_backend is not None:
                self._sync_forwarding(state, full=full)
            rendered = self._render(state, changed=changed, full=full)
            self.backend.restore(rendered.text)
        except BaseException:
            self._programmed = None
            raise
        self._programmed = rendered
        if full:
            self._rules_by_service = {}
        self._rules_by_service.update(rendered.rules_by_service)
        for name in set(self._rules_by_service) - set(state.service_ports):
            del self._rules_by_service[name]
        total = rendered.fixed_rule_count + sum(self._rules_by_service.values())
        return SyncOutcome(full=full, rules_programmed=total)

    def _sync_forwarding(self, state: ProxyState, *, full: bool) -> None:
        assert self.forward_backend is not None
        # A handful of rules: rewritten every sync, hooks checked on full syncs only.
        to_place = (
            {
                h: n
                for h, n in hooks_out_of_place(
                    {"filter": self.forward_backend.save("filter")}
                ).items()
                if h in FORWARD_HOOKS
            }
            if full
            else {}
        )
        ruleset = render_iptables_forward_ruleset(
            state.instance_cidrs, missing_hooks=list(to_place), hook_copies=to_place
        )
        self.forward_backend.restore(ruleset)

    def _render(
        self, state: ProxyState, *, changed: Set[ServicePortName], full: bool
    ) -> RenderedNftRuleset:
        if full or self._programmed is None:
            existing = nft_objects(self.backend.save(names.NFT_TABLE))
            return render_nftables_ruleset(
                state.service_ports,
                instance_cidrs=state.instance_cidrs,
                stale_chains={ChainName(c) for c in existing["chain"]},
                stale_sets={ChainName(s) for s in existing["set"] if s not in FIXED_SETS},
            )
        skip = {
            name
            for name in state.service_ports
            if name not in changed and name in self._rules_by_service
        }
        return render_nftables_ruleset(
            state.service_ports,
            instance_cidrs=state.instance_cidrs,
            skip=skip,
            stale_chains=self._programmed.chains,
            stale_sets=self._programmed.sets - set(FIXED_SETS),
        )

    async def canary_intact(self) -> bool:
        return await asyncio.to_thread(self.canary_intact_blocking)

    def canary_intact_blocking(self) -> bool:
        rules = self.backend.list_chain(names.NFT_TABLE, CANARY_CHAIN)
        return bool(rules) and any("kopflet canary" in r for r in rules or ())

    async def close(self) -> None:
        return None
