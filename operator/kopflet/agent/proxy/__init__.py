"""The node agent's proxy half: the kube-proxy role.

Makes every ProxyService reachable on this node: its virtual IP (and node port, on
every node address) load-balanced over its ready endpoints, from the node itself and
from every instance on it, across nodes thanks to host-subnet routes.

How the agent drives it::

    engine = ProxyEngine(node_name="node-a", mode="iptables")  # or "nftables", "userspace"
    # from the watch handlers (kopf), for every event:
    engine.on_service(old, new)      # ProxyService dicts; old=None on add, new=None on delete
    engine.on_node(old, new)         # NodeAgent dicts, likewise
    # once the initial lists of both kinds have been fed:
    engine.mark_initial_lists_complete()
    task = asyncio.create_task(engine.run())   # sync loop; cancel it to stop
    # kopflet agent --cleanup:
    engine.cleanup()                 # or cleanup_all(), without an engine

The callbacks only record changes (cheap, never block); ``run()`` programs the node:
nothing before the initial lists are complete, syncs at most every
``SyncPolicy.min_interval`` (1 s), a full resync every ``full_period`` (30 s), a
canary check every ``canary_interval`` (5 s). Stopping the agent leaves the rules in
place (static stability); a restarted agent takes them over with its first full sync.
``engine.last_successful_sync`` is the wall time of the last sync that worked.

Layers inside: ``model``, ``conversion``, ``change_tracker``, ``chain_names``,
``*_render``, ``conntrack``/``host_routes`` planning and ``sync_schedule`` are pure;
``netfilter_backend``, ``commands``, ``host_routes``/``conntrack`` execution and the
``userspace_*`` relays do i/o; ``syncer`` and ``engine`` tie them together.
"""

from kopflet.agent.proxy.cleanup import CleanupReport, cleanup_all
from kopflet.agent.proxy.clock import FakeClock, ProxyClock, SystemClock
from kopflet.agent.proxy.commands import CommandError, CommandRunner
from kopflet.agent.proxy.engine import ProxyEngine, make_proxier
from kopflet.agent.proxy.fake_backend import FakeIptablesBackend
from kopflet.agent.proxy.iptables_render import render_iptables_ruleset
from kopflet.agent.proxy.metrics import ProxyMetrics
from kopflet.agent.proxy.model import (
    PROXY_MODES,
    ChainName,
    EndpointInfo,
    NodeName,
    NodeRoute,
    ProxyMode,
    ServicePortInfo,
    ServicePortName,
)
from kopflet.agent.proxy.netfilter_backend import (
    IptablesBackend,
    NetfilterBackend,
    NetfilterError,
    NftablesBackend,
    detect_iptables_variant,
)
from kopflet.agent.proxy.nftables_render import render_nftables_ruleset
from kopflet.agent.proxy.sync_schedule import SyncPolicy

__all__ = [
    "PROXY_MODES",
    "ChainName",
    "CleanupReport",
    "CommandError",
    "CommandRunner",
    "EndpointInfo",
    "FakeClock",
    "FakeIptablesBackend",
    "IptablesBackend",
    "NetfilterBackend",
    "NetfilterError",
    "NftablesBackend",
    "NodeName",
    "NodeRoute",
    "ProxyClock",
    "ProxyEngine",
    "ProxyMetrics",
    "ProxyMode",
    "ServicePortInfo",
    "ServicePortName",
    "SyncPolicy",
    "SystemClock",
    "cleanup_all",
    "detect_iptables_variant",
    "make_proxier",
    "render_iptables_ruleset",
    "render_nftables_ruleset",
]
