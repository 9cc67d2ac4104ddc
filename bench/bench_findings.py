"""What limits each target that a run missed: the causes found by profiling (py-spy) and by the
figures the benches print next to their results. Printed into docs/BENCHMARKS.md only for the
targets the run actually missed, so a fixed cause drops out of the page by itself."""

from __future__ import annotations

from collections.abc import Sequence

FINDINGS: dict[str, str] = {
    "1": """\
**#1 startup (p50 overhead over bare Docker).** An Instance is two containers -- the sandbox
that holds its network namespace (the pod's pause container) and the app container -- where the
baseline is one; on a 2-core machine the engines are the bottleneck, so that second container is
most of the overhead. The throughput line shows it: dockerd CPU per Instance is about twice its
CPU per bare container. A py-spy profile of an agent during a burst shows its threads waiting on
the Engine API (create, start, inspect; the relist's container list is ~13% of samples), not
computing; the agents together use ~0.1 s of CPU per Instance, the controller ~0.02 s. Binding
(created -> bound, printed with the p50) takes a second or more when the machine is loaded: the
controller shares the two cores with everything else.""",
    "2": """\
**#2 throughput.** Same cause as #1: two containers per Instance against one per bare
`docker run`, on engines that are CPU-bound; the ratio tracks the dockerd CPU per Instance
against per bare container printed on the line.""",
    "3": """\
**#3 proxy sync.** The tools set the floor: `iptables-nft-restore` 1.8.9 and `nft` 1.0.6 both
apply large rulesets worse than linearly in the number of chains (the bare tool's own time is
the baseline on each line; a bare `iptables-nft-restore` of 2,000 x 10 did not finish in 10
minutes on this machine, so iptables mode is not run at 10,000). For a one-endpoint change the
partial text is still O(all services): iptables mode rewrites `KOPFLET-SERVICES` and
`KOPFLET-NODEPORTS` whole (as kube-proxy does), nftables mode re-fills its verdict maps whole
(~600 KB at 10,000). py-spy of the nftables partial sync at 10,000 x 10 (one change, 1.2-4 s):
44% of samples in `render_nftables_ruleset`, half of that naming the endpoint chains of *every*
service (`nft_endpoint_chain` -> `_endpoint_hash`, 23% of all samples) although only one
changed; 14% waiting for `nft -f`. Reaching 100 ms needs partial syncs that are O(changes):
map element add/delete instead of a refill, and chain names kept from the previous sync for
skipped services (kube-proxy's nftables proxier works that way).""",
}


def findings_for(benches: Sequence[str], *, failed_steps: Sequence[str] = ()) -> str:
    parts = [FINDINGS[b] for b in benches if b in FINDINGS]
    unexplained = [b for b in benches if b not in FINDINGS]
    if unexplained:
        parts.append(
            "Missed without an analysis yet: " + ", ".join(f"#{b}" for b in unexplained) + "."
        )
    if failed_steps:
        parts.append(
            "Steps that failed (their figures are missing above): " + ", ".join(failed_steps) + "."
        )
    return "\n\n".join(parts) if parts else "None in this run."
