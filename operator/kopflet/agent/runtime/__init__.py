"""The node agent's runtime half: the kubelet role on the node's Docker engine (in progress)."""
