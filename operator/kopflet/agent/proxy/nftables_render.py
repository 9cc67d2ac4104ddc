"""The nftables ruleset of the proxy: one table of ours, for ``nft -f``, whole or in part.

Pure: service-ports in, text out. The table ``ip kopflet`` has its own base chains on
the nat and filter hooks and, like kube-proxy's nftables mode, looks services up in
maps instead of walking a chain rule by rule. Unlike it, a service-port without
ClientIP affinity owns no chain and no rule at all, only map entries:

* ``service-ips`` maps ``virtual IP . protocol . port`` to ``goto pick-<proto>-<n>``,
  where ``n`` is its number of endpoints, and ``service-nodeports`` maps
  ``protocol . port`` (to a local address) to ``goto nodeport-pick-<proto>-<n>``;
* ``pick-tcp-<n>`` DNATs with one rule: the key ``virtual IP . port .
  numgen random mod n`` looked up in ``service-endpoints-tcp``, which holds each
  endpoint's address and port under its index; ``nodeport-pick-tcp-<n>`` marks for
  masquerade and does the same with ``port . numgen random mod n`` in
  ``nodeport-endpoints-tcp``; likewise for UDP. These chains are shared: one per
  protocol and endpoint count in use;
* hairpin traffic (an endpoint reaching itself through a virtual IP) is masqueraded in
  postrouting by looking ``source . destination`` up in ``hairpin-endpoints``, which
  holds ``ip . ip`` for every endpoint on this node;
* a service-port with ClientIP affinity keeps chains of its own, as kube-proxy's:
  ``svc-…`` picks an endpoint chain, first by affinity (a dynamic set of client
  addresses per endpoint, with the affinity timeout), then with ``numgen random mod n``
  over a verdict map; ``sep-…`` records the client and DNATs; ``ext-…`` marks node-port
  traffic for masquerade and goes on to ``svc-…``;
* ``no-endpoint-services`` / ``no-endpoint-nodeports`` send new connections to a
  service-port without endpoints to ``reject-chain``;
* the endpoint maps and the hairpin set (:data:`FILL_MAPS`) carry a generation in their
  names in the table (``service-endpoints-tcp-g3``): a full sync of a big table fills
  the next generation while the rules look up the live one, then switches the rules over
  in one transaction (:func:`render_nftables_ruleset`).

Why entries rather than chains: the kernel and ``nft`` 1.0.6 pay for every chain and
every anonymous set in the table. A table of 10,000 service-ports x 10 endpoints built
of chains (110,000 of them, 10,000 anonymous ``numgen`` maps) took minutes to load and a
second for any later ``add rule``, since ``nft`` lists every chain and set first and the
kernel numbers each new anonymous set by scanning all the others; the same services as
map entries load in seconds, and a one-endpoint change is a few ``add``/``delete
element`` lines (docs/PROXY.md).

Every chain written is declared (``add``, a no-op if it exists) and flushed in the same
transaction; a chain not written keeps its rules. ``flush table`` is never used: it would
empty the affinity sets.

:func:`render_nftables_ruleset` writes everything (a full sync). :func:`render_nftables_partial`
writes what changed only: the chains of the service-ports that changed, ``add element`` /
``delete element`` for the map entries that came or went, the shared chains that came or
went, and deletes what those service-ports no longer need; what every other service-port
owns (:class:`NftServicePort`, kept by the proxier from the previous sync) is neither
named nor touched.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from itertools import chain as chain_of
from typing import TypeVar

from kopflet.agent.proxy import chain_names as names
from kopflet.agent.proxy.model import ChainName, ServicePortInfo, ServicePortName

TABLE = f"{names.NFT_FAMILY} {names.NFT_TABLE}"
TABLE_DECLARATION = f'add table {TABLE} {{ comment "kopflet proxy rules" ; }}'
_K = TypeVar("_K")

#: Base chains: name -> hook declaration. Filter chains run just before the usual
#: filter priority, nat chains at the usual nat priorities.
BASE_CHAINS: Mapping[str, str] = {
    "nat-prerouting": "type nat hook prerouting priority dstnat ; policy accept ;",
    "nat-output": "type nat hook output priority -100 ; policy accept ;",
    "nat-postrouting": "type nat hook postrouting priority srcnat ; policy accept ;",
    "filter-input": "type filter hook input priority -10 ; policy accept ;",
    "filter-output": "type filter hook output priority -10 ; policy accept ;",
    "filter-forward": "type filter hook forward priority -10 ; policy accept ;",
}
REGULAR_CHAINS = ("services", "mark-for-masquerade", "masquerading", "reject-chain", "canary")
#: Maps and sets whose entries service-ports own: name -> declaration. A map's entries
#: are ``key : value``, a set's are keys alone.
MAPS: Mapping[str, str] = {
    "service-ips": "type ipv4_addr . inet_proto . inet_service : verdict ;",
    "service-nodeports": "type inet_proto . inet_service : verdict ;",
    "no-endpoint-services": "type ipv4_addr . inet_proto . inet_service : verdict ;",
    "no-endpoint-nodeports": "type inet_proto . inet_service : verdict ;",
    **{
        f"service-endpoints-{p}": f"typeof ip daddr . {p} dport . numgen random mod 1"
        f" : ip daddr . {p} dport ;"
        for p in ("tcp", "udp")
    },
    **{
        f"nodeport-endpoints-{p}": f"typeof {p} dport . numgen random mod 1"
        f" : ip daddr . {p} dport ;"
        for p in ("tcp", "udp")
    },
    "hairpin-endpoints": "type ipv4_addr . ipv4_addr ;",
}
#: Of :data:`MAPS`, the ones that are sets (no value per entry).
ENTRY_SETS = frozenset({"hairpin-endpoints"})
#: Of :data:`MAPS`, the ones whose entries name no chain, nearly all of a big table's
#: entries. In the table their names carry a generation (``service-endpoints-tcp-g3``):
#: a full sync of a big table fills those of a new generation before any rule looks
#: them up, in transactions of their own that run at the same time, then switches the
#: rules over to them (see ``fill_transactions``).
FILL_MAPS = tuple(m for m in MAPS if "-endpoints" in m)
_GENERATION = re.compile(rf"^({'|'.join(map(re.escape, FILL_MAPS))})-g(\d+)$")
_REFERENCE = re.compile(r"@([\w-]+)")
#: Fewer entries than this per fill transaction are not worth a process of their own.
FILL_MIN_ENTRIES = 10_000
FIXED_SETS: Mapping[str, str] = {"instance-subnets": "type ipv4_addr ; flags interval ;"}
CANARY_CHAIN = ChainName("canary")
CANARY_RULE = 'return comment "kopflet canary"'

_MARK = f"{names.MASQ_MARK:#x}"

_FIXED_RULES: tuple[tuple[str, str], ...] = (
    ("nat-prerouting", "jump services"),
    ("nat-output", "jump services"),
    # Hairpin: an endpoint reaching itself through a virtual IP must see the reply come
    # from the virtual IP, so the node must stay in the path.
    ("nat-postrouting", "ip saddr . ip daddr @hairpin-endpoints jump mark-for-masquerade"),
    ("nat-postrouting", "jump masquerading"),
    ("services", "ip daddr . meta l4proto . th dport vmap @service-ips"),
    ("services", "fib daddr type local meta l4proto . th dport vmap @service-nodeports"),
    ("filter-input", "ct state new fib daddr type local meta l4proto . th dport"
     " vmap @no-endpoint-nodeports"),
    ("filter-output", "ct state new ip daddr . meta l4proto . th dport vmap @no-endpoint-services"),
    ("filter-forward", "ct state new ip daddr . meta l4proto . th dport"
     " vmap @no-endpoint-services"),
    ("filter-forward", f"meta mark & {_MARK} != 0 accept"),
    ("filter-forward", "ct state related,established accept"),
    ("filter-forward", "ip daddr @instance-subnets accept"),
    ("filter-forward", "ip saddr @instance-subnets accept"),
    # TCP gets a reset: ICMP errors to one host are rate-limited (see iptables_render).
    ("reject-chain", "meta l4proto tcp reject with tcp reset"),
    ("reject-chain", "reject"),
    ("canary", CANARY_RULE),
    ("mark-for-masquerade", f"meta mark set meta mark | {_MARK}"),
    ("masquerading", f"meta mark & {_MARK} == 0 return"),
    # Clear the mark so a packet re-entering the stack isn't masqueraded twice.
    ("masquerading", f"meta mark set meta mark ^ {_MARK}"),
    ("masquerading", "masquerade fully-random"),
)  # fmt: skip

_PICK = "pick-"
_NODEPORT_PICK = "nodeport-pick-"


def pick_chain(protocol: str, endpoints: int) -> ChainName:
    """The shared chain DNATing a virtual IP to one of ``endpoints`` endpoints."""
    return ChainName(f"{_PICK}{protocol.lower()}-{endpoints}")


def nodeport_pick_chain(protocol: str, endpoints: int) -> ChainName:
    """The shared chain DNATing a node port to one of ``endpoints`` endpoints."""
    return ChainName(f"{_NODEPORT_PICK}{protocol.lower()}-{endpoints}")


def table_name(map_name: str, generation: int) -> str:
    """What the map or set ``map_name`` (one of :data:`MAPS`) is called in the table."""
    return f"{map_name}-g{generation}" if map_name in FILL_MAPS else map_name


def live_generation(names_in_table: Iterable[str]) -> int | None:
    """The newest generation of endpoint maps among the table's maps and sets."""
    found = [int(m.group(2)) for n in names_in_table if (m := _GENERATION.match(n))]
    return max(found, default=None)


def _at_generation(rule: str, generation: int) -> str:
    return _REFERENCE.sub(lambda m: "@" + table_name(m.group(1), generation), rule)


def _shared_chain_rules(chain: ChainName) -> list[str]:
    """The rules of a shared chain, known from its name alone.

    One map per protocol: the map's data names the protocol's port (``tcp dport``), and
    ``nft`` 1.0.6 can't read back a NAT map whose port is the protocol-less ``th dport``.
    """
    if chain.startswith(_NODEPORT_PICK):
        proto, _, n = chain.removeprefix(_NODEPORT_PICK).partition("-")
        return [
            # Node-port traffic may leave for another node: masquerade it so the reply
            # comes back through this node.
            "jump mark-for-masquerade",
            f"dnat ip to {proto} dport . numgen random mod {n} map @nodeport-endpoints-{proto}",
        ]
    proto, _, n = chain.removeprefix(_PICK).partition("-")
    return [
        f"dnat ip to ip daddr . {proto} dport . numgen random mod {n}"
        f" map @service-endpoints-{proto}"
    ]


#: One entry of one of our maps or sets: ``(map, key, value)``; the value is ``""`` in a set.
NftElement = tuple[str, str, str]


@dataclass(frozen=True)
class NftServicePort:
    """What one service-port has in the table once its rules are applied: its own chains
    and affinity sets, the shared chains it goes to, its entries in the shared maps, and
    how many rules its own chains hold."""

    chains: frozenset[ChainName] = frozenset()
    sets: frozenset[ChainName] = frozenset()
    #: In the order they are written; each once.
    elements: tuple[NftElement, ...] = ()
    rules: int = 0
    shared_chains: frozenset[ChainName] = frozenset()


@dataclass(frozen=True)
class RenderedNftRuleset:
    """``text`` for ``nft -f``; ``chains`` and ``sets`` every object of ours that exists
    once it is applied; ``service_ports`` what each service-port owns. Entries come in
    the order of the service-ports' names."""

    text: str
    chains: frozenset[ChainName]
    sets: frozenset[ChainName]
    rules_by_service: Mapping[ServicePortName, int] = field(default_factory=dict)
    service_ports: Mapping[ServicePortName, NftServicePort] = field(default_factory=dict)
    #: How many service-ports want each map entry and each shared chain; entries per map.
    element_refs: Mapping[NftElement, int] = field(default_factory=dict)
    chain_refs: Mapping[ChainName, int] = field(default_factory=dict)
    map_sizes: Mapping[str, int] = field(default_factory=dict)
    #: Applied before ``text``, each in a transaction of its own, at the same time: they
    #: make :data:`FILL_MAPS` of ``generation`` and fill them; ``text`` doesn't.
    fill_texts: tuple[str, ...] = ()
    #: The endpoint maps' generation the rules look up once ``text`` is applied.
    generation: int = 0


@dataclass(frozen=True)
class RenderedNftPartial:
    """A partial sync: ``text`` for ``nft -f``; ``service_ports`` what each service-port
    it rendered owns once applied (``None``: removed, it owns nothing any more);
    ``element_refs`` / ``chain_refs`` the new count of service-ports wanting each map
    entry / shared chain it touched."""

    text: str
    service_ports: Mapping[ServicePortName, NftServicePort | None]
    element_refs: Mapping[NftElement, int]
    elements_added: Sequence[NftElement] = ()
    elements_deleted: Sequence[NftElement] = ()
    chain_refs: Mapping[ChainName, int] = field(default_factory=dict)


class _Buffer:
    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.declarations: list[str] = []
        self.flushes: list[str] = []
        self.element_deletions: list[str] = []
        self.rules: list[str] = []
        self.elements_added: list[str] = []
        self.deletions: list[str] = []
        self.chains: set[ChainName] = set()
        #: Sets and maps of ours declared in this text, by their names in the table.
        self.sets: set[ChainName] = set()
        self.maps: set[ChainName] = set()

    def chain(self, name: str, declaration: str | None = None) -> None:
        body = f" {{ {declaration} }}" if declaration else ""
        self.declarations.append(f"add chain {TABLE} {name}{body}")
        self.flushes.append(f"flush chain {TABLE} {name}")
        self.chains.add(ChainName(name))

    def rule(self, chain: str, rule: str) -> None:
        self.rules.append(f"add rule {TABLE} {chain} {rule}")

    def shared_chain(self, chain: ChainName) -> None:
        self.chain(chain)
        for rule in _shared_chain_rules(chain):
            self.rule(chain, _at_generation(rule, self.generation))

    def elements(self, map_name: str, elements: list[str]) -> None:
        if elements:
            self.elements_added.append(_element_line(map_name, self.generation, elements))

    def put_first(self, other: _Buffer) -> None:
        """Put what ``other`` holds before what this buffer holds."""
        for kind in ("declarations", "flushes", "element_deletions", "rules", "elements_added"):
            setattr(self, kind, getattr(other, kind) + getattr(self, kind))
        self.deletions = other.deletions + self.deletions
        self.chains |= other.chains
        self.sets |= other.sets
        self.maps |= other.maps

    def text(self) -> str:
        lines = [
            TABLE_DECLARATION,
            *self.declarations,
            *self.flushes,
            # Before the adds: an entry may come back under the same key with a new value.
            *self.element_deletions,
            *self.rules,
            # After the rules: a verdict may go to a chain made in this transaction.
            *self.elements_added,
            *self.deletions,
        ]
        return "\n".join(lines) + "\n"


def _entry(map_name: str, key: str, value: str) -> str:
    return key if map_name in ENTRY_SETS else f"{key} : {value}"


def _element_line(map_name: str, generation: int, elements: list[str]) -> str:
    return f"add element {TABLE} {table_name(map_name, generation)} {{ {', '.join(elements)} }}"


#: What each service-port without chains of its own rendered to, with the info it was
#: rendered from: the same info renders the same entries, so a full sync works out again
#: only the service-ports that changed since the one before.
RenderMemo = dict[ServicePortName, tuple[ServicePortInfo, NftServicePort]]


def render_nftables_ruleset(
    service_ports: Mapping[ServicePortName, ServicePortInfo],
    *,
    instance_cidrs: Iterable[str] = (),
    stale_chains: Iterable[ChainName] = (),
    stale_sets: Iterable[ChainName] = (),
    stale_maps: Iterable[ChainName] = (),
    local_node: str | None = None,
    memo: RenderMemo | None = None,
    live: int | None = None,
    fill_transactions: int = 0,
    fill_min_entries: int = FILL_MIN_ENTRIES,
) -> RenderedNftRuleset:
    """Render the whole table for ``service_ports`` (a full sync): every chain rewritten,
    every map refilled; stale chains, sets and maps are deleted. ``local_node``: this
    node, whose endpoints alone get hairpin entries (``None``: every endpoint). ``memo``
    (the same ``local_node`` every time) is read and brought up to date.

    ``live`` is the generation of endpoint maps in the table (:func:`live_generation`).
    Given ``fill_transactions``, a table with at least two times ``fill_min_entries``
    endpoint entries gets the maps of the next generation made and filled by up to that
    many ``fill_texts``, at least ``fill_min_entries`` entries each: nft spends its time
    parsing entries, one core a process, and nothing looks those maps up until ``text``,
    one transaction, points the rules at them and deletes the old ones. So the rules
    switch all at once, never half; the kernel holds both generations in between.
    Otherwise ``text`` flushes and refills the live generation's maps itself."""
    buf = _Buffer(generation=0)  # the generation is set below, before any name needs it
    by_map: dict[str, list[str]] = {m: [] for m in MAPS}
    owned: dict[ServicePortName, NftServicePort] = {}
    chain_refs: dict[ChainName, int] = {}
    if memo is not None:
        for gone in memo.keys() - service_ports.keys():
            del memo[gone]
    for name in sorted(service_ports):
        info = service_ports[name]
        cached = memo.get(name) if memo is not None else None
        if cached is not None and cached[0] == info:
            objects = cached[1]
        else:
            objects = _render_service_port(buf, name, info, local_node)
            if memo is not None:
                if objects.chains:  # its chains are written into this text: render again
                    memo.pop(name, None)
                else:
                    memo[name] = (info, objects)
        owned[name] = objects
        for chain in objects.shared_chains:
            chain_refs[chain] = chain_refs.get(chain, 0) + 1
    # Counted in one go (in C); an entry two service-ports want is written once, where
    # the first of them wants it.
    refs = Counter(chain_of.from_iterable(o.elements for o in owned.values()))
    for element in refs:
        by_map[element[0]].append(_entry(*element))
    map_sizes = {m: len(e) for m, e in by_map.items() if e}
    chunks = min(fill_transactions, sum(len(by_map[m]) for m in FILL_MAPS) // fill_min_entries)
    filling = chunks > 1
    generation = buf.generation = (live + int(filling)) if live is not None else 0
    fixed = _Buffer(generation)
    _render_fixed(fixed, instance_cidrs=instance_cidrs, fill_maps_flushed=not filling)
    buf.put_first(fixed)
    for chain in sorted(chain_refs, key=_shared_order):
        buf.shared_chain(chain)
    fill_texts = (
        _fill_texts({m: by_map.pop(m) for m in FILL_MAPS}, chunks, generation) if filling else ()
    )
    for map_name, elements in by_map.items():
        buf.elements(map_name, elements)

    for chain in sorted(set(stale_chains) - buf.chains):
        # Flushed first: a chain with rules can't be deleted.
        buf.flushes.append(f"flush chain {TABLE} {chain}")
        buf.deletions.append(f"delete chain {TABLE} {chain}")
    for set_name in sorted(set(stale_sets) - buf.sets):
        buf.deletions.append(f"delete set {TABLE} {set_name}")
    for map_name in sorted(set(stale_maps) - buf.maps):
        buf.deletions.append(f"delete map {TABLE} {map_name}")
    return RenderedNftRuleset(
        text=buf.text(),
        chains=frozenset(buf.chains),
        sets=frozenset(buf.sets),
        rules_by_service={n: o.rules for n, o in owned.items() if o.rules},
        service_ports=owned,
        element_refs=refs,
        chain_refs=chain_refs,
        map_sizes=map_sizes,
        fill_texts=fill_texts,
        generation=generation,
    )


def _kind(map_name: str) -> str:
    return "set" if map_name in ENTRY_SETS else "map"


def _declaration(map_name: str, generation: int) -> str:
    in_table = table_name(map_name, generation)
    return f"add {_kind(map_name)} {TABLE} {in_table} {{ {MAPS[map_name]} }}"


def _fill_texts(entries: Mapping[str, list[str]], chunks: int, generation: int) -> tuple[str, ...]:
    """``chunks`` texts that each make the maps of ``generation`` and add an even share
    of every map's entries."""
    texts = []
    for c in range(chunks):
        lines = [TABLE_DECLARATION, *(_declaration(m, generation) for m in entries)]
        for map_name, elements in entries.items():
            n = len(elements)
            part = elements[n * c // chunks : n * (c + 1) // chunks]
            if part:
                lines.append(_element_line(map_name, generation, part))
        texts.append("\n".join(lines) + "\n")
    return tuple(texts)


def render_nftables_partial(
    service_ports: Mapping[ServicePortName, ServicePortInfo],
    *,
    changed: Collection[ServicePortName],
    programmed: Mapping[ServicePortName, NftServicePort],
    element_refs: Mapping[NftElement, int],
    chain_refs: Mapping[ChainName, int] | None = None,
    instance_cidrs: Iterable[str] | None = None,
    local_node: str | None = None,
    generation: int = 0,
) -> RenderedNftPartial:
    """Render what a partial sync must change, and nothing else.

    ``changed`` are the service-ports whose rules differ from what the last sync left
    (added and removed ones included); ``programmed`` what every service-port owns since
    then, ``element_refs`` / ``chain_refs`` how many service-ports want each map entry /
    shared chain (two service-ports may want the same entry, many the same chain). The
    fixed chains, maps and sets are left as the last full sync wrote them (rewriting
    their two dozen rules made ``nft`` read every set of the table: tens of milliseconds
    at 10,000 service-ports), the maps are not flushed: only entries nobody wants any
    more are deleted and only new ones added; a shared chain is written when its first
    user comes and deleted when its last one goes.
    ``instance_cidrs`` refills the forwarding set; ``None`` leaves it as it is.
    ``generation``: of the endpoint maps the last full sync left.
    """
    chain_refs = chain_refs or {}
    buf = _Buffer(generation)
    if instance_cidrs is not None:
        buf.flushes.append(f"flush set {TABLE} instance-subnets")
        buf.elements("instance-subnets", sorted(set(instance_cidrs)))
    owned: dict[ServicePortName, NftServicePort | None] = {}
    refs: dict[NftElement, int] = {}
    shared_refs: dict[ChainName, int] = {}
    old_chains: set[ChainName] = set()
    old_sets: set[ChainName] = set()
    for name in sorted(changed):
        old = programmed.get(name, _NOTHING)
        info = service_ports.get(name)
        new = _NOTHING if info is None else _render_service_port(buf, name, info, local_node)
        owned[name] = None if info is None else new
        _recount(refs, element_refs, set(old.elements), set(new.elements))
        _recount(shared_refs, chain_refs, old.shared_chains, new.shared_chains)
        old_chains |= old.chains
        old_sets |= old.sets

    shared_refs = {c: max(n, 0) for c, n in shared_refs.items()}
    for chain in sorted(shared_refs, key=_shared_order):
        if shared_refs[chain] > 0 and chain_refs.get(chain, 0) == 0:
            buf.shared_chain(chain)
        elif shared_refs[chain] == 0 and chain_refs.get(chain, 0) > 0:
            old_chains.add(chain)

    refs = {e: max(n, 0) for e, n in refs.items()}
    deleted = sorted(e for e, n in refs.items() if n == 0 and element_refs.get(e, 0) > 0)
    added = sorted(e for e, n in refs.items() if n > 0 and element_refs.get(e, 0) == 0)
    for map_name in MAPS:
        keys = [key for m, key, _ in deleted if m == map_name]
        if keys:
            in_table = table_name(map_name, generation)
            buf.element_deletions.append(
                f"delete element {TABLE} {in_table} {{ {', '.join(keys)} }}"
            )
    for map_name in MAPS:
        buf.elements(map_name, [_entry(m, key, v) for m, key, v in added if m == map_name])

    for chain in sorted(old_chains - buf.chains):
        buf.flushes.append(f"flush chain {TABLE} {chain}")
        buf.deletions.append(f"delete chain {TABLE} {chain}")
    for set_name in sorted(old_sets - buf.sets):
        buf.deletions.append(f"delete set {TABLE} {set_name}")
    return RenderedNftPartial(
        text=buf.text(),
        service_ports=owned,
        element_refs=refs,
        elements_added=added,
        elements_deleted=deleted,
        chain_refs=shared_refs,
    )


_NOTHING = NftServicePort()


def _recount(counts: dict[_K, int], before: Mapping[_K, int], old: Set[_K], new: Set[_K]) -> None:
    """One service-port went from wanting ``old`` to wanting ``new``: move the counts
    (``counts`` holds the ones changed so far, ``before`` the rest)."""
    for item in old - new:
        counts[item] = counts.get(item, before.get(item, 0)) - 1
    for item in new - old:
        counts[item] = counts.get(item, before.get(item, 0)) + 1


def _shared_order(chain: ChainName) -> tuple[str, int]:
    prefix, _, n = chain.rpartition("-")
    return (prefix, int(n))


def _render_fixed(
    buf: _Buffer, *, instance_cidrs: Iterable[str], fill_maps_flushed: bool = True
) -> None:
    """The table's own chains, maps and sets, all flushed and refilled (the endpoint
    maps of the buffer's generation not, unless ``fill_maps_flushed``)."""
    for chain, declaration in BASE_CHAINS.items():
        buf.chain(chain, declaration)
    for chain in REGULAR_CHAINS:
        buf.chain(chain)
    for map_name in MAPS:
        kind, in_table = _kind(map_name), table_name(map_name, buf.generation)
        buf.declarations.append(_declaration(map_name, buf.generation))
        (buf.sets if kind == "set" else buf.maps).add(ChainName(in_table))
        if fill_maps_flushed or map_name not in FILL_MAPS:
            buf.flushes.append(f"flush {kind} {TABLE} {in_table}")
    for set_name, declaration in FIXED_SETS.items():
        buf.declarations.append(f"add set {TABLE} {set_name} {{ {declaration} }}")
        buf.flushes.append(f"flush set {TABLE} {set_name}")
        buf.sets.add(ChainName(set_name))
    for chain, rule in _FIXED_RULES:
        buf.rule(chain, _at_generation(rule, buf.generation))
    buf.elements("instance-subnets", sorted(set(instance_cidrs)))


def programmed_count(
    *, rules: int, instance_cidrs: bool, shared_chains: Iterable[ChainName], map_entries: int
) -> int:
    """What the proxier reports as programmed: rules, and every entry of the service
    maps and sets -- an entry does what a rule per endpoint does in kube-proxy's layout,
    so the figure still grows with the services and endpoints."""
    shared = sum(len(_shared_chain_rules(c)) for c in shared_chains)
    return len(_FIXED_RULES) + int(instance_cidrs) + shared + rules + map_entries


def _elements(
    name: ServicePortName, info: ServicePortInfo, local_node: str | None
) -> list[NftElement]:
    """The entries ``name`` wants in the shared maps and sets.

    Hairpin entries only for this node's endpoints (and those of no known node): a
    packet from an endpoint to a virtual IP is DNATed on the endpoint's own node.
    """
    proto = info.protocol.lower()
    vip = f"{info.cluster_ip} . {proto} . {info.port}"
    node_port = f"{proto} . {info.node_port}"
    if not info.endpoints:
        reject = "goto reject-chain"
        elements = [("no-endpoint-services", vip, reject)]
        if info.node_port is not None:
            elements.append(("no-endpoint-nodeports", node_port, reject))
        return elements
    elements = [
        ("hairpin-endpoints", f"{e.ip} . {e.ip}", "")
        for e in info.endpoints
        if local_node is None or e.node_name is None or e.node_name == local_node
    ]
    n = len(info.endpoints)
    if info.affinity_timeout is not None:
        svc = names.nft_service_chain(name, info.protocol)
        elements.append(("service-ips", vip, f"goto {svc}"))
        if info.node_port is not None:
            ext = names.nft_external_chain(name, info.protocol)
            elements.append(("service-nodeports", node_port, f"goto {ext}"))
        return elements
    elements.append(("service-ips", vip, f"goto {pick_chain(proto, n)}"))
    targets = [f"{e.ip} . {e.port}" for e in info.endpoints]
    endpoints_map, key = f"service-endpoints-{proto}", f"{info.cluster_ip} . {info.port} . "
    elements += [(endpoints_map, f"{key}{i}", target) for i, target in enumerate(targets)]
    if info.node_port is not None:
        elements.append(("service-nodeports", node_port, f"goto {nodeport_pick_chain(proto, n)}"))
        endpoints_map, key = f"nodeport-endpoints-{proto}", f"{info.node_port} . "
        elements += [(endpoints_map, f"{key}{i}", target) for i, target in enumerate(targets)]
    return elements


def _render_service_port(
    buf: _Buffer, name: ServicePortName, info: ServicePortInfo, local_node: str | None
) -> NftServicePort:
    """Write the chains of one service-port (none but with ClientIP affinity: its map
    entries do the rest); returns everything it owns once applied."""
    elements = tuple(dict.fromkeys(_elements(name, info, local_node)))
    if not info.endpoints:
        return NftServicePort(elements=elements)
    timeout = info.affinity_timeout
    if timeout is None:
        n = len(info.endpoints)
        shared = [pick_chain(info.protocol, n)]
        if info.node_port is not None:
            shared.append(nodeport_pick_chain(info.protocol, n))
        return NftServicePort(elements=elements, shared_chains=frozenset(shared))
    before = len(buf.rules)
    proto = info.protocol.lower()
    svc = names.nft_service_chain(name, info.protocol)
    ext = names.nft_external_chain(name, info.protocol) if info.node_port is not None else None
    endpoint_chains = [names.nft_endpoint_chain(name, info.protocol, e) for e in info.endpoints]
    affinity_sets = [
        names.nft_affinity_set(name, info.protocol, e, timeout) for e in info.endpoints
    ]
    owned = [svc, *endpoint_chains, *([ext] if ext else [])]
    for chain in owned:
        buf.chain(chain)
    for set_name in affinity_sets:
        # Declared, never flushed: the clients' stickiness survives every sync.
        buf.declarations.append(
            f"add set {TABLE} {set_name} {{ type ipv4_addr ; flags dynamic,timeout ;"
            f" timeout {timeout}s ; }}"
        )
        buf.sets.add(set_name)
    comment = f'comment "{name}"'
    if ext is not None:
        buf.rule(ext, f"jump mark-for-masquerade {comment}")
        buf.rule(ext, f"goto {svc}")
    for set_name, chain in zip(affinity_sets, endpoint_chains, strict=True):
        buf.rule(svc, f"ip saddr @{set_name} goto {chain}")
    if len(endpoint_chains) == 1:
        buf.rule(svc, f"goto {endpoint_chains[0]} {comment}")
    else:
        choices = ", ".join(f"{i} : goto {c}" for i, c in enumerate(endpoint_chains))
        buf.rule(svc, f"numgen random mod {len(endpoint_chains)} vmap {{ {choices} }} {comment}")
    for i, (endpoint, chain) in enumerate(zip(info.endpoints, endpoint_chains, strict=True)):
        buf.rule(chain, f"update @{affinity_sets[i]} {{ ip saddr }}")
        buf.rule(chain, f"meta l4proto {proto} dnat to {endpoint.address} {comment}")
    return NftServicePort(
        chains=frozenset(owned),
        sets=frozenset(affinity_sets),
        elements=elements,
        rules=len(buf.rules) - before,
    )
