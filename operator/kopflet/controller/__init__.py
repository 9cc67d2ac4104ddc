"""The controller: Workloads into Instances, the scheduler, node lifecycle and IPAM, and the
ProxyService controller (clusterIP, nodePort, endpoints), leader-elected. See docs/CONTROLLER.md.

Layers inside the package, top to bottom (each imports only from below):

* entry points — ``main`` (flags, leader election, kopf run), ``handlers`` (thin kopf
  handlers: index the watched objects, route each event to the queues it concerns),
  ``kopf_settings``;
* sync loops — ``runtime`` (wiring), ``workload_sync``, ``scheduler``, ``node_lifecycle``,
  ``node_ipam``, ``service_sync``, ``allocator``: re-read the cache, call a planner, act;
* adapters — ``kube_api`` (async HTTP to the API server), ``events`` (the Events API),
  ``leader_election`` (a coordination Lease), ``observability`` (metrics, health), ``logs``;
* in-memory state and pure planners, no i/o — ``cluster_cache``, ``object_index``,
  ``node_usage``, ``expectations``, ``work_queue``, ``rollout``, ``workload_status``,
  ``scheduling``, ``node_health``, ``endpoints``, ``address_pools``, ``instance_state``,
  ``template_hash``, ``options``.
"""
