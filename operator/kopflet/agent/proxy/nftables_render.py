"""The nftables ruleset of the proxy: one table of ours, rendered whole for ``nft -f``.

Pure: service-ports in, text out. The shape follows kube-proxy's nftables mode: the
table ``ip kopflet`` has its own base chains on the nat and filter hooks, and looks
services up in verdict maps instead of walking a chain rule by rule:

* ``service-ips`` maps ``virtual IP . protocol . port`` to ``goto svc-…``, and
  ``service-nodeports`` maps ``protocol . port`` (to a local address) to ``goto ext-…``,
  which marks for masquerade and goes on to ``svc-…``;
* ``svc-…`` picks an endpoint chain: first by ClientIP affinity (a dynamic set of
  client addresses per endpoint, with the affinity timeout), then with
  ``numgen random mod n`` over a verdict map;
* ``sep-…`` marks hairpin traffic, records the client for affinity and DNATs;
* ``no-endpoint-services`` / ``no-endpoint-nodeports`` send new connections to a
  service-port without endpoints to ``reject-chain``.

Every chain written is declared (``add``, a no-op if it exists) and flushed in the same
transaction; a chain not written keeps its rules, which is how a partial sync skips
unchanged service-ports. ``flush table`` is never used: it would empty the affinity sets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field

from kopflet.agent.proxy import chain_names as names
from kopflet.agent.proxy.model import ChainName, ServicePortInfo, ServicePortName

TABLE = f"{names.NFT_FAMILY} {names.NFT_TABLE}"

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
MAPS: Mapping[str, str] = {
    "service-ips": "type ipv4_addr . inet_proto . inet_service : verdict ;",
    "service-nodeports": "type inet_proto . inet_service : verdict ;",
    "no-endpoint-services": "type ipv4_addr . inet_proto . inet_service : verdict ;",
    "no-endpoint-nodeports": "type inet_proto . inet_service : verdict ;",
}
FIXED_SETS: Mapping[str, str] = {"instance-subnets": "type ipv4_addr ; flags interval ;"}
CANARY_CHAIN = ChainName("canary")
CANARY_RULE = 'return comment "kopflet canary"'

_MARK = f"{names.MASQ_MARK:#x}"

_FIXED_RULES: tuple[tuple[str, str], ...] = (
    ("nat-prerouting", "jump services"),
    ("nat-output", "jump services"),
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


@dataclass(frozen=True)
class RenderedNftRuleset:
    """``text`` for ``nft -f``; ``chains`` and ``sets`` every object of ours that exists
    once it is applied (skipped service-ports' included)."""

    text: str
    chains: frozenset[ChainName]
    sets: frozenset[ChainName]
    fixed_rule_count: int
    rules_by_service: Mapping[ServicePortName, int] = field(default_factory=dict)


class _Buffer:
    def __init__(self) -> None:
        self.declarations: list[str] = []
        self.flushes: list[str] = []
        self.rules: list[str] = []
        self.deletions: list[str] = []
        self.chains: set[ChainName] = set()
        self.sets: set[ChainName] = set()

    def chain(self, name: str, declaration: str | None = None) -> None:
        body = f" {{ {declaration} }}" if declaration else ""
        self.declarations.append(f"add chain {TABLE} {name}{body}")
        self.flushes.append(f"flush chain {TABLE} {name}")
        self.chains.add(ChainName(name))

    def rule(self, chain: str, rule: str) -> None:
        self.rules.append(f"add rule {TABLE} {chain} {rule}")

    def elements(self, map_name: str, elements: list[str]) -> None:
        if elements:
            self.rules.append(f"add element {TABLE} {map_name} {{ {', '.join(elements)} }}")

    def text(self) -> str:
        head = [f'add table {TABLE} {{ comment "kopflet proxy rules" ; }}']
        lines = [*head, *self.declarations, *self.flushes, *self.rules, *self.deletions]
        return "\n".join(lines) + "\n"


def render_nftables_ruleset(
    service_ports: Mapping[ServicePortName, ServicePortInfo],
    *,
    instance_cidrs: Iterable[str] = (),
    skip: Set[ServicePortName] = frozenset(),
    stale_chains: Iterable[ChainName] = (),
    stale_sets: Iterable[ChainName] = (),
) -> RenderedNftRuleset:
    """Render the table for ``service_ports``; ``skip`` leaves those service-ports' own
    chains as programmed (partial sync); stale chains and sets are deleted."""
    buf = _Buffer()
    for chain, declaration in BASE_CHAINS.items():
        buf.chain(chain, declaration)
    for chain in REGULAR_CHAINS:
        buf.chain(chain)
    for map_name, declaration in MAPS.items():
        buf.declarations.append(f"add map {TABLE} {map_name} {{ {declaration} }}")
        buf.flushes.append(f"flush map {TABLE} {map_name}")
    for set_name, declaration in FIXED_SETS.items():
        buf.declarations.append(f"add set {TABLE} {set_name} {{ {declaration} }}")
        buf.flushes.append(f"flush set {TABLE} {set_name}")
        buf.sets.add(ChainName(set_name))
    for chain, rule in _FIXED_RULES:
        buf.rule(chain, rule)
    buf.elements("instance-subnets", sorted(set(instance_cidrs)))
    fixed = len(buf.rules)

    service_ips: list[str] = []
    node_ports: list[str] = []
    no_endpoint_ips: list[str] = []
    no_endpoint_ports: list[str] = []
    per_service: dict[ServicePortName, int] = {}
    for name in sorted(service_ports):
        info = service_ports[name]
        proto = info.protocol.lower()
        if not info.endpoints:
            no_endpoint_ips.append(f"{info.cluster_ip} . {proto} . {info.port} : goto reject-chain")
            if info.node_port is not None:
                no_endpoint_ports.append(f"{proto} . {info.node_port} : goto reject-chain")
            continue
        svc = names.nft_service_chain(name, info.protocol)
        service_ips.append(f"{info.cluster_ip} . {proto} . {info.port} : goto {svc}")
        if info.node_port is not None:
            ext = names.nft_external_chain(name, info.protocol)
            node_ports.append(f"{proto} . {info.node_port} : goto {ext}")
        before = len(buf.rules)
        _render_service_port(buf, name, info, skip_own_chains=name in skip)
        if name not in skip:
            per_service[name] = len(buf.rules) - before
    buf.elements("service-ips", service_ips)
    buf.elements("service-nodeports", node_ports)
    buf.elements("no-endpoint-services", no_endpoint_ips)
    buf.elements("no-endpoint-nodeports", no_endpoint_ports)
    fixed += sum(1 for x in (service_ips, node_ports, no_endpoint_ips, no_endpoint_ports) if x)

    for chain in sorted(set(stale_chains) - buf.chains):
        # Flushed first: a chain with rules can't be deleted.
        buf.flushes.append(f"flush chain {TABLE} {chain}")
        buf.deletions.append(f"delete chain {TABLE} {chain}")
    for set_name in sorted(set(stale_sets) - buf.sets):
        buf.deletions.append(f"delete set {TABLE} {set_name}")
    return RenderedNftRuleset(
        text=buf.text(),
        chains=frozenset(buf.chains),
        sets=frozenset(buf.sets),
        fixed_rule_count=fixed,
        rules_by_service=per_service,
    )


def _render_service_port(
    buf: _Buffer, name: ServicePortName, info: ServicePortInfo, *, skip_own_chains: bool
) -> None:
    proto = info.protocol.lower()
    svc = names.nft_service_chain(name, info.protocol)
    ext = names.nft_external_chain(name, info.protocol) if info.node_port is not None else None
    endpoint_chains = [names.nft_endpoint_chain(name, info.protocol, e) for e in info.endpoints]
    timeout = info.affinity_timeout
    affinity_sets = (
        [names.nft_affinity_set(name, info.protocol, e, timeout) for e in info.endpoints]
        if timeout is not None
        else []
    )
    owned = [svc, *endpoint_chains, *([ext] if ext else [])]
    if skip_own_chains:
        buf.chains.update(owned)
        buf.sets.update(affinity_sets)
        return
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
        # Node-port traffic may leave for another node: masquerade it so the reply
        # comes back through this node.
        buf.rule(ext, f"jump mark-for-masquerade {comment}")
        buf.rule(ext, f"goto {svc}")
    if affinity_sets:
        for set_name, chain in zip(affinity_sets, endpoint_chains, strict=True):
            buf.rule(svc, f"ip saddr @{set_name} goto {chain}")
    if len(endpoint_chains) == 1:
        buf.rule(svc, f"goto {endpoint_chains[0]} {comment}")
    else:
        choices = ", ".join(f"{i} : goto {c}" for i, c in enumerate(endpoint_chains))
        buf.rule(svc, f"numgen random mod {len(endpoint_chains)} vmap {{ {choices} }} {comment}")
    for i, (endpoint, chain) in enumerate(zip(info.endpoints, endpoint_chains, strict=True)):
        # Hairpin: an endpoint reaching itself through the virtual IP must see the
        # reply come from the virtual IP, so the node must be in the path.
        buf.rule(chain, f"ip saddr {endpoint.ip} jump mark-for-masquerade")
        if affinity_sets:
            buf.rule(chain, f"update @{affinity_sets[i]} {{ ip saddr }}")
        buf.rule(chain, f"meta l4proto {proto} dnat to {endpoint.address} {comment}")
