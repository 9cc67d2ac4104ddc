"""The iptables ruleset of the proxy, rendered whole as ``iptables-restore`` input.

Pure: service-ports in, text out. The shape follows kube-proxy's iptables mode:

* nat ``KOPFLET-SERVICES`` (hooked from PREROUTING and OUTPUT) matches a virtual IP
  and port and jumps to that service-port's ``KFL-SVC-…`` chain; its last rule sends
  traffic to a local address on to ``KOPFLET-NODEPORTS``;
* ``KFL-SVC-…`` picks an endpoint chain ``KFL-SEP-…``: first by ClientIP affinity
  (``recent``), then at random with ``statistic`` probability ``1/(n-i)`` so that every
  endpoint gets ``1/n`` of the new connections;
* ``KFL-SEP-…`` marks hairpin traffic for masquerade and DNATs to the endpoint;
* ``KOPFLET-POSTROUTING`` masquerades what was marked (node ports, hairpin);
* filter ``KOPFLET-SERVICES`` / ``KOPFLET-EXTERNAL-SERVICES`` reject new connections
  to service-ports without endpoints at once, and ``KOPFLET-FORWARD`` lets service
  and instance-subnet traffic through a FORWARD policy of DROP (Docker's).

Everything is declared with ``--noflush`` semantics in mind: a declared chain is
flushed and refilled in the same transaction; a chain left undeclared keeps its rules,
which is how a partial sync skips the chains of unchanged service-ports, and the shared
chains (``KOPFLET-SERVICES``, ``KOPFLET-NODEPORTS``, ...) whose content is what the
last successful sync wrote: their rules are rendered every time, but only a digest of
each is compared (see ``shared_digests``), so an endpoint change writes its own chains
only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field

from kopflet.agent.proxy import chain_names as names
from kopflet.agent.proxy.model import ChainName, ServicePortInfo, ServicePortName

NAT = "nat"
FILTER = "filter"
TABLES = (FILTER, NAT)


@dataclass(frozen=True)
class Hook:
    """A jump from a built-in chain into ours: the only rules of ours outside our chains."""

    table: str
    chain: str
    spec: str

    @property
    def target(self) -> str:
        return self.spec.rsplit("-j ", 1)[1].split()[0]


_NEW = "-m conntrack --ctstate NEW"

HOOKS: tuple[Hook, ...] = (
    Hook(
        FILTER,
        "INPUT",
        f'{_NEW} -m comment --comment "kopflet externally-visible service portals"'
        f" -j {names.EXTERNAL_SERVICES}",
    ),
    Hook(
        FILTER,
        "OUTPUT",
        f'{_NEW} -m comment --comment "kopflet service portals" -j {names.SERVICES}',
    ),
    Hook(FILTER, "FORWARD", f'-m comment --comment "kopflet forwarding rules" -j {names.FORWARD}'),
    Hook(NAT, "PREROUTING", f'-m comment --comment "kopflet service portals" -j {names.SERVICES}'),
    Hook(NAT, "OUTPUT", f'-m comment --comment "kopflet service portals" -j {names.SERVICES}'),
    Hook(
        NAT,
        "POSTROUTING",
        f'-m comment --comment "kopflet postrouting rules" -j {names.POSTROUTING}',
    ),
)

FIXED_CHAINS: Mapping[str, tuple[ChainName, ...]] = {
    FILTER: (names.SERVICES, names.EXTERNAL_SERVICES, names.FORWARD, names.CANARY),
    NAT: (names.SERVICES, names.NODEPORTS, names.POSTROUTING, names.MARK_MASQ, names.CANARY),
}

#: A shared chain: (table, chain), one of :data:`FIXED_CHAINS`.
SharedChain = tuple[str, ChainName]

CANARY_RULE = f'-A {names.CANARY} -m comment --comment "kopflet canary" -j RETURN'

_MARK = f"{names.MASQ_MARK:#x}"


#: A rule line with the chain it is in: ``(chain, "-A chain ...")``.
Rule = tuple[str, str]


@dataclass(frozen=True)
class ServicePortRules:
    """What one service-port puts in the ruleset, as rendered for ``info``: its rules in
    the shared chains, per table, and its own nat chains (its service chain first).

    A partial sync hands the last successful sync's back for the service-ports it skips:
    their rules in the shared chains are taken from here instead of rendered again, which
    at 1,000 service-ports is most of what a one-endpoint change costs in Python."""

    info: ServicePortInfo
    filter_rules: tuple[Rule, ...]
    nat_rules: tuple[Rule, ...]
    chains: tuple[ChainName, ...]

    def renders(self, info: ServicePortInfo) -> bool:
        return self.info is info or self.info == info


@dataclass(frozen=True)
class RenderedRuleset:
    """``text`` for ``iptables-restore --noflush``; ``chains`` every chain of ours that
    exists once it is applied (skipped ones included); ``fixed_rule_count`` the rules of
    our fixed chains and the hooks; ``rules_by_service`` the rules written per
    service-port (skipped ones are absent); ``by_service`` what every service-port puts
    in the ruleset (skipped ones included); ``shared_digests`` a digest of the rules
    every shared chain holds once it is applied (left out ones included)."""

    text: str
    chains: Mapping[str, frozenset[ChainName]]
    fixed_rule_count: int
    rules_by_service: Mapping[ServicePortName, int] = field(default_factory=dict)
    by_service: Mapping[ServicePortName, ServicePortRules] = field(default_factory=dict)
    shared_digests: Mapping[SharedChain, str] = field(default_factory=dict)


class _Table:
    def __init__(self, name: str) -> None:
        self.name = name
        self.chains: list[ChainName] = []
        self.rules: list[Rule] = []
        self.deletions: list[str] = []

    def chain(self, chain: ChainName) -> None:
        self.chains.append(chain)

    def rule(self, *words: str) -> None:
        line = " ".join(words)
        self.rules.append((_chain_of(line), line))

    def digests(self) -> dict[SharedChain, str]:
        """A digest of the rules of each of our fixed chains in this table, in order."""
        fixed = FIXED_CHAINS[self.name]
        rules: dict[str, list[str]] = {c: [] for c in fixed}
        for chain, line in self.rules:
            if chain in rules:
                rules[chain].append(line)
        return {
            (self.name, ChainName(c)): hashlib.sha256("\n".join(r).encode()).hexdigest()
            for c, r in rules.items()
        }

    def text(self, *, leave_out: Set[str] = frozenset()) -> list[str]:
        """Lines of this table, without the chains in ``leave_out`` (neither declared nor
        written: ``--noflush`` leaves them as they are); nothing if nothing is left."""
        chains = [c for c in self.chains if c not in leave_out]
        rules = [line for chain, line in self.rules if chain not in leave_out]
        if not (chains or rules or self.deletions):
            return []
        return [
            f"*{self.name}",
            *(f":{c} - [0:0]" for c in chains),
            *rules,
            *self.deletions,
            "COMMIT",
        ]


def _chain_of(rule: str) -> str:
    """The chain a rule line (``-A CHAIN ...``, ``-I CHAIN 1 ...``, ``-D CHAIN ...``) is in."""
    return rule.split(" ", 2)[1]


def _comment(text: str) -> str:
    return f'-m comment --comment "{text}"'


def _reject(protocol: str) -> str:
    """TCP is refused with a reset: the kernel rate-limits the ICMP errors it sends to one
    host (``net.ipv4.icmp_ratelimit``: one a second after a burst of six), so a client
    opening connections in a loop would see most refusals only after a SYN retransmit."""
    return "-j REJECT --reject-with tcp-reset" if protocol == "TCP" else "-j REJECT"


def _match(protocol: str, port: int) -> str:
    proto = protocol.lower()
    return f"-p {proto} -m {proto} --dport {port}"


def render_iptables_ruleset(
    service_ports: Mapping[ServicePortName, ServicePortInfo],
    *,
    instance_cidrs: Iterable[str] = (),
    skip: Set[ServicePortName] = frozenset(),
    stale_chains: Mapping[str, Iterable[ChainName]] | None = None,
    missing_hooks: Iterable[Hook] = HOOKS,
    hook_copies: Mapping[Hook, int] | None = None,
    programmed_shared: Mapping[SharedChain, str] | None = None,
    programmed_by_service: Mapping[ServicePortName, ServicePortRules] | None = None,
) -> RenderedRuleset:
    """Render every chain of ours for ``service_ports``.

    ``skip``: service-ports whose own chains are already programmed as they should be
    (partial sync); their jumps in the shared chains are still rendered. ``stale_chains``
    per table are flushed and deleted. ``missing_hooks`` are inserted at the top of
    their built-in chains (the caller checks which exist; by default all are written),
    after deleting the ``hook_copies`` already there (a hook that is no longer first).
    ``programmed_shared``: the ``shared_digests`` of what the last successful sync
    wrote (partial sync); a shared chain whose rules still have that digest is left out
    of the text, neither declared nor written. ``programmed_by_service``: the
    ``by_service`` of the last successful sync, so that the rules of skipped
    service-ports in the shared chains need not be rendered again, nor their chains
    named again (hashing every endpoint's name costs more than the rest of a partial
    render).
    """
    filt, nat = _Table(FILTER), _Table(NAT)
    tables = {FILTER: filt, NAT: nat}
    for table in (filt, nat):
        for chain in FIXED_CHAINS[table.name]:
            table.chain(chain)
    for hook in missing_hooks:
        _place_hook(tables[hook.table], hook, (hook_copies or {}).get(hook, 0))
    _render_fixed_rules(filt, nat, instance_cidrs=sorted(set(instance_cidrs)))
    # The hooks count whether this sync inserts them or finds them in place.
    fixed = len(HOOKS) + sum(1 for t in (filt, nat) for _, r in t.rules if r.startswith("-A "))
    active: dict[str, set[ChainName]] = {FILTER: set(filt.chains), NAT: set(nat.chains)}
    per_service: dict[ServicePortName, int] = {}
    by_service: dict[ServicePortName, ServicePortRules] = {}
    programmed = programmed_by_service or {}
    for name in sorted(service_ports, key=lambda n: n.sort_key):
        info = service_ports[name]
        known = programmed.get(name) if name in skip else None
        if known is None or not known.renders(info):
            own_rules = len(nat.rules)
            known = _render_service_port(nat, name, info, skip_own_chains=name in skip)
            if name not in skip:
                shared = len(known.filter_rules) + len(known.nat_rules)
                per_service[name] = len(nat.rules) - own_rules + shared
        filt.rules.extend(known.filter_rules)
        nat.rules.extend(known.nat_rules)
        active[NAT].update(known.chains)
        by_service[name] = known
    nat.rule(
        f"-A {names.SERVICES}",
        _comment("kopflet service nodeports; NOTE: this must be the last rule in this chain"),
        f"-m addrtype --dst-type LOCAL -j {names.NODEPORTS}",
    )
    fixed += 1
    for table_name, chains in (stale_chains or {}).items():
        table = tables[table_name]
        for chain in sorted(set(chains) - active[table_name]):
            table.chain(chain)
            table.deletions.append(f"-X {chain}")
    digests = {**filt.digests(), **nat.digests()}
    unchanged = {
        key for key, digest in digests.items() if (programmed_shared or {}).get(key) == digest
    }
    lines = [
        *filt.text(leave_out={c for t, c in unchanged if t == FILTER}),
        *nat.text(leave_out={c for t, c in unchanged if t == NAT}),
    ]
    return RenderedRuleset(
        text="\n".join(lines) + "\n" if lines else "",
        chains={t: frozenset(c) for t, c in active.items()},
        fixed_rule_count=fixed,
        rules_by_service=per_service,
        by_service=by_service,
        shared_digests=digests,
    )


def _render_fixed_rules(filt: _Table, nat: _Table, *, instance_cidrs: list[str]) -> None:
    for table in (filt, nat):
        table.rule(CANARY_RULE)
    filt.rule(f"-A {names.FORWARD} -m conntrack --ctstate NEW -j {names.SERVICES}")
    _render_forward_rules(filt, instance_cidrs=instance_cidrs)
    nat.rule(f"-A {names.MARK_MASQ} -j MARK --or-mark {_MARK}")
    nat.rule(f"-A {names.POSTROUTING} -m mark ! --mark {_MARK}/{_MARK} -j RETURN")
    # Clear the mark so a packet re-entering the stack (tunnels) isn't masqueraded twice.
    nat.rule(f"-A {names.POSTROUTING} -j MARK --xor-mark {_MARK}")
    nat.rule(
        f"-A {names.POSTROUTING}",
        _comment("kopflet service traffic requiring SNAT"),
        "-j MASQUERADE --random-fully",
    )


def _render_forward_rules(filt: _Table, *, instance_cidrs: list[str]) -> None:
    filt.rule(
        f"-A {names.FORWARD}",
        _comment("kopflet forwarding rules"),
        f"-m mark --mark {_MARK}/{_MARK} -j ACCEPT",
    )
    filt.rule(
        f"-A {names.FORWARD}",
        _comment("kopflet forwarding conntrack rule"),
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    )
    # Host subnetting: instances of other nodes reach ours (and ours them) by routing,
    # which a FORWARD policy of DROP (Docker's) would stop.
    for cidr in instance_cidrs:
        for direction in ("-d", "-s"):
            filt.rule(
                f"-A {names.FORWARD}",
                _comment("kopflet instance subnet"),
                f"{direction} {cidr} -j ACCEPT",
            )


FORWARD_HOOKS: tuple[Hook, ...] = tuple(h for h in HOOKS if h.target == names.FORWARD)


def render_iptables_forward_ruleset(
    instance_cidrs: Iterable[str],
    *,
    missing_hooks: Iterable[Hook] = FORWARD_HOOKS,
    hook_copies: Mapping[Hook, int] | None = None,
) -> str:
    """Only ``KOPFLET-FORWARD``, for the nftables mode on a node whose Docker keeps its
    rules in iptables: an accept in our nft table can't overrule a drop in Docker's
    FORWARD chain (every table gets its say), so forwarding is let through there."""
    filt = _Table(FILTER)
    filt.chain(names.FORWARD)
    for hook in missing_hooks:
        _place_hook(filt, hook, (hook_copies or {}).get(hook, 0))
    _render_forward_rules(filt, instance_cidrs=sorted(set(instance_cidrs)))
    return "\n".join(filt.text()) + "\n"


def _place_hook(table: _Table, hook: Hook, copies: int) -> None:
    for _ in range(copies):
        table.rule(f"-D {hook.chain} {hook.spec}")
    table.rule(f"-I {hook.chain} 1 {hook.spec}")


def _render_service_port(
    nat: _Table, name: ServicePortName, info: ServicePortInfo, *, skip_own_chains: bool
) -> ServicePortRules:
    """What one service-port puts in the ruleset. Its own chains are declared and written
    in ``nat`` unless ``skip_own_chains``; its rules in the shared chains are returned."""
    match = _match(info.protocol, info.port)
    filter_rules: list[Rule] = []
    nat_rules: list[Rule] = []
    if not info.endpoints:
        # REJECT in filter, not nat: the client gets "connection refused" at once
        # instead of waiting for a SYN that goes nowhere.
        reject = _reject(info.protocol)
        filter_rules.append(
            _shared(
                names.SERVICES,
                _comment(f"{name} has no endpoints"),
                f"-d {info.cluster_ip}/32 {match} {reject}",
            )
        )
        if info.node_port is not None:
            filter_rules.append(
                _shared(
                    names.EXTERNAL_SERVICES,
                    _comment(f"{name} has no endpoints"),
                    f"-m addrtype --dst-type LOCAL {_match(info.protocol, info.node_port)}"
                    f" {reject}",
                )
            )
        return ServicePortRules(info, tuple(filter_rules), (), ())
    svc = names.service_chain(name, info.protocol)
    nat_rules.append(
        _shared(
            names.SERVICES,
            _comment(f"{name} cluster IP"),
            f"-d {info.cluster_ip}/32 {match} -j {svc}",
        )
    )
    if info.node_port is not None:
        node_match = _match(info.protocol, info.node_port)
        # Node-port traffic comes from anywhere and may leave for another node:
        # masquerade it so the reply comes back through this node.
        nat_rules.append(
            _shared(names.NODEPORTS, _comment(str(name)), f"{node_match} -j {names.MARK_MASQ}")
        )
        nat_rules.append(_shared(names.NODEPORTS, _comment(str(name)), f"{node_match} -j {svc}"))
    endpoint_chains = [names.endpoint_chain(name, info.protocol, e) for e in info.endpoints]
    rules = ServicePortRules(info, tuple(filter_rules), tuple(nat_rules), (svc, *endpoint_chains))
    if skip_own_chains:
        return rules
    nat.chain(svc)
    for chain in endpoint_chains:
        nat.chain(chain)
    if info.affinity_timeout is not None:
        for endpoint, chain in zip(info.endpoints, endpoint_chains, strict=True):
            nat.rule(
                f"-A {svc}",
                _comment(f"{name} -> {endpoint.address}"),
                f"-m recent --name {chain} --rcheck --seconds {info.affinity_timeout} --reap",
                f"-j {chain}",
            )
    count = len(endpoint_chains)
    for i, (endpoint, chain) in enumerate(zip(info.endpoints, endpoint_chains, strict=True)):
        # Each rule takes 1/(n-i) of what the previous ones left: 1/n overall each.
        pick = (
            f"-m statistic --mode random --probability {1.0 / (count - i):.10f} "
            if i < count - 1
            else ""
        )
        nat.rule(f"-A {svc}", _comment(f"{name} -> {endpoint.address}"), f"{pick}-j {chain}")
    proto = info.protocol.lower()
    for endpoint, chain in zip(info.endpoints, endpoint_chains, strict=True):
        # Hairpin: an endpoint reaching itself through the virtual IP must see the
        # reply come from the virtual IP, so the node must be in the path.
        nat.rule(f"-A {chain}", _comment(str(name)), f"-s {endpoint.ip}/32 -j {names.MARK_MASQ}")
        recent = f"-m recent --name {chain} --set " if info.affinity_timeout is not None else ""
        nat.rule(
            f"-A {chain}",
            _comment(str(name)),
            f"-p {proto} {recent}-m {proto} -j DNAT --to-destination {endpoint.address}",
        )
    return rules


def _shared(chain: ChainName, *words: str) -> Rule:
    """A rule appended to one of the shared chains."""
    return (chain, " ".join((f"-A {chain}", *words)))
