"""kopflet: the Kubernetes node components as a kopf operator on Docker.

Layers, top to bottom (each may import only from the layers below it):

* ``kopflet.cli``, ``kopflet.controller.handlers``, ``kopflet.agent.main`` — entry points
  and thin kopf handlers;
* ``kopflet.controller``, ``kopflet.agent`` — planners (pure) and sync loops;
* ``kopflet.local`` and the adapters — Docker, netfilter, processes, the API;
* ``kopflet.api`` — pure data: the objects' models and constants, no i/o.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
