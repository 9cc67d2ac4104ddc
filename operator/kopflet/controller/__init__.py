"""The controller: Workloads into Instances, the scheduler, node lifecycle and IPAM, and the
ProxyService controller (clusterIP, nodePort, endpoints), leader-elected.

Layers inside the package, top to bottom (each imports only from below):

* ``main`` (flags, leader election, kopf run) and ``handlers`` (thin kopf handlers: index the
  watched objects, route each event to the queues it concerns);
* sync loops — ``runtime`` (wiring), ``workload_sync``, ``scheduler``, ``node_lifecycle``,
  ``node_ipam``, ``service_sync``, ``allocator``: re-read the cache, call a planner, act;
* adapters — ``kube_api`` (async HTTP to the API server), ``events`` (the Events API),
  ``leader_election`` (a coordination Lease), ``observability`` (metrics, health, logs);
* pure planners and values, no i/o — ``rollout``, ``workload_status``, ``scheduling``,
  ``node_health``, ``address_pools``, ``endpoints``, ``expectations``, ``work_queue``,
  ``object_index``, ``instance_state``, ``template_hash``, ``options``.
"""
