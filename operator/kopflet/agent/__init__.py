"""The node agent: the kubelet and kube-proxy roles of one node, on the Kubernetes API.

Two engines do the node's work and know nothing of the API: ``runtime`` (the kubelet
role on the node's Docker engine) and ``proxy`` (the kube-proxy role in the node's
netfilter). The modules here connect them to the API server:

* ``main`` (what ``kopflet agent`` runs) and ``options`` — the command line;
* ``node_agent`` — wires the engines, the watches and the node's own objects together;
* ``instance_feed``, ``reference_cache``, ``api_reporter``, ``event_recorder``,
  ``node_registration``, ``node_lease`` — the sync loops between API and engines;
* ``informer`` and ``kube_client`` — list+watch and requests over aiohttp (the adapter);
* ``node_status``, ``status_patch`` — pure: what to write, computed from what is known;
* ``observability`` — logging, health and Prometheus endpoints;
* ``logs_command`` — ``kopflet logs``: a container's output, read from its node's engine.

Imports go downwards only: entry points > loops > adapters > ``kopflet.api``.
"""
