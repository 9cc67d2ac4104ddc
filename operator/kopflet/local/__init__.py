"""The local cluster: control-plane binaries and processes, node namespaces with their own
Docker engine, and test images."""
