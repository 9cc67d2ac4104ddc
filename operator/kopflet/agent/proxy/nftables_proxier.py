"""nftables mode: render our table, apply it in one ``nft -f`` transaction.

Same contract as the iptables mode: a full sync lists the table to find stale chains
and sets, a partial one trusts what the last successful sync left, any failure makes
the next one full.

A partial sync costs what changed, not what exists: the proxier keeps, from the last
successful sync, what every service-port owns in the table (chains, affinity sets, map
entries) and how many service-ports want each map entry and each shared chain, so it
can write the changed service-ports' chains, add and delete single map entries and
delete what went away without naming anything else.

On a node whose Docker keeps its rules in iptables, ``forward_backend`` also gets the
one iptables chain ``KOPFLET-FORWARD``: Docker's FORWARD policy is DROP, and an accept
in our table can't overrule a drop in another (every table has its say).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Mapping, Set
from typing import TypeVar

from kopflet.agent.proxy import chain_names as names
from kopflet.agent.proxy.iptables_proxier import hooks_out_of_place
from kopflet.agent.proxy.iptables_render import FORWARD_HOOKS, render_iptables_forward_ruleset
from kopflet.agent.proxy.model import ChainName, ProxyMode, ServicePortName
from kopflet.agent.proxy.netfilter_backend import NetfilterBackend, NftBackend, nft_objects
from kopflet.agent.proxy.nftables_render import (
    CANARY_CHAIN,
    FILL_MIN_ENTRIES,
    FIXED_SETS,
    MAPS,
    NftElement,
    NftServicePort,
    RenderMemo,
    live_generation,
    programmed_count,
    render_nftables_partial,
    render_nftables_ruleset,
)
from kopflet.agent.proxy.proxier import ProxyState, SyncOutcome

_K = TypeVar("_K")


class NftablesProxier:
    def __init__(
        self,
        backend: NftBackend,
        *,
        forward_backend: NetfilterBackend | None = None,
        node_name: str | None = None,
        fill_transactions: int | None = None,
        fill_min_entries: int = FILL_MIN_ENTRIES,
    ) -> None:
        self.backend = backend
        #: A full sync of a big table fills new endpoint maps with this many nft
        #: processes at once (default: one a core), each given at least
        #: ``fill_min_entries`` entries.
        self.fill_transactions = (
            fill_transactions if fill_transactions is not None else os.cpu_count() or 1
        )
        self.fill_min_entries = fill_min_entries
        self.forward_backend = forward_backend
        #: This node: only its own endpoints can reach themselves through it (hairpin).
        self.node_name = node_name
        # What the last successful sync left; ``None``: the next sync is full.
        self._service_ports: dict[ServicePortName, NftServicePort] | None = None
        self._element_refs: dict[NftElement, int] = {}
        self._chain_refs: dict[ChainName, int] = {}
        self._map_sizes: Counter[str] = Counter()
        self._instance_cidrs: tuple[str, ...] = ()
        self._service_rules = 0
        # A cache of pure renders, right whatever the kernel holds: kept across failures.
        self._memo: RenderMemo = {}
        # Of the endpoint maps the rules look up (set by every successful full sync).
        self._generation = 0

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
        full = full or self._service_ports is None
        try:
            if self.forward_backend is not None:
                self._sync_forwarding(state, full=full)
            if full:
                self._sync_full(state)
            else:
                self._sync_partial(state, changed=changed)
        except BaseException:
            self._service_ports = None
            raise
        total = programmed_count(
            rules=self._service_rules,
            instance_cidrs=bool(self._instance_cidrs),
            shared_chains=self._chain_refs,
            map_entries=sum(self._map_sizes[m] for m in MAPS),
        )
        return SyncOutcome(full=full, rules_programmed=total)

    def _sync_forwarding(self, state: ProxyState, *, full: bool) -> None:
        assert self.forward_backend is not None
        # A handful of rules, but an iptables-restore costs tens of milliseconds: written
        # on full syncs (hooks checked) and when the instance subnets change.
        if not full and _cidrs(state.instance_cidrs) == self._instance_cidrs:
            return
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

    def _sync_full(self, state: ProxyState) -> None:
        self._service_ports = None
        existing = nft_objects(self.backend.save(names.NFT_TABLE))
        rendered = render_nftables_ruleset(
            state.service_ports,
            instance_cidrs=state.instance_cidrs,
            stale_chains={ChainName(c) for c in existing["chain"]},
            stale_sets={ChainName(s) for s in existing["set"] if s not in FIXED_SETS},
            stale_maps={ChainName(m) for m in existing["map"]},
            local_node=self.node_name,
            memo=self._memo,
            live=live_generation(existing["map"] | existing["set"]),
            fill_transactions=self.fill_transactions,
            fill_min_entries=self.fill_min_entries,
        )
        if rendered.fill_texts:
            # Maps of a new generation that no rule looks up yet: the text switches.
            self.backend.restore_each(rendered.fill_texts)
        self.backend.restore(rendered.text)
        self._generation = rendered.generation
        self._element_refs = dict(rendered.element_refs)
        self._chain_refs = dict(rendered.chain_refs)
        self._map_sizes = Counter(rendered.map_sizes)
        self._instance_cidrs = _cidrs(state.instance_cidrs)
        self._service_rules = sum(o.rules for o in rendered.service_ports.values())
        self._service_ports = dict(rendered.service_ports)

    def _sync_partial(self, state: ProxyState, *, changed: Set[ServicePortName]) -> None:
        programmed = self._service_ports
        assert programmed is not None
        wanted = state.service_ports
        # Added and removed service-ports count as changed even if nobody said so.
        dirty = {n for n in changed if n in wanted or n in programmed}
        dirty.update(wanted.keys() - programmed.keys(), programmed.keys() - wanted.keys())
        cidrs = _cidrs(state.instance_cidrs)
        rendered = render_nftables_partial(
            wanted,
            changed=dirty,
            programmed=programmed,
            element_refs=self._element_refs,
            chain_refs=self._chain_refs,
            instance_cidrs=None if cidrs == self._instance_cidrs else cidrs,
            local_node=self.node_name,
            generation=self._generation,
        )
        self.backend.restore(rendered.text)
        # Applied: the record follows.
        _apply_counts(self._element_refs, rendered.element_refs)
        _apply_counts(self._chain_refs, rendered.chain_refs)
        self._map_sizes.update(m for m, _, _ in rendered.elements_added)
        self._map_sizes.subtract(m for m, _, _ in rendered.elements_deleted)
        for name, owned in rendered.service_ports.items():
            previous = programmed.pop(name, None)
            self._service_rules -= previous.rules if previous else 0
            if owned is not None:
                programmed[name] = owned
                self._service_rules += owned.rules
        self._instance_cidrs = cidrs

    async def canary_intact(self) -> bool:
        return await asyncio.to_thread(self.canary_intact_blocking)

    def canary_intact_blocking(self) -> bool:
        # A count, not a listing: ``nft list chain`` reads the whole table's entries first.
        return bool(self.backend.rule_count(names.NFT_TABLE, CANARY_CHAIN))

    async def close(self) -> None:
        return None


def _apply_counts(record: dict[_K, int], changes: Mapping[_K, int]) -> None:
    """Take a partial sync's new counts into the record; a count of 0 leaves it."""
    for item, count in changes.items():
        if count:
            record[item] = count
        else:
            record.pop(item, None)


def _cidrs(instance_cidrs: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(set(instance_cidrs)))
