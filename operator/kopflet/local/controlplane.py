"""etcd, kube-apiserver and kube-controller-manager as local processes, started as envtest starts
them: TLS everywhere, RBAC, service-account signing keys."""

from __future__ import annotations

import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from kopflet.local.binaries import Binaries
from kopflet.local.components import Component
from kopflet.local.config import ClusterConfig
from kopflet.local.kubeconfigs import write_kubeconfig
from kopflet.local.pki import Pki, ensure_pki

#: The range of core Services' ClusterIPs (the apiserver insists on one). kopflet's own
#: ProxyServices take theirs from a separate range the controller owns.
CORE_SERVICE_CIDR = "10.0.0.0/24"

#: An audit policy file: when set, the API server writes its audit log next to its own log
#: (``audit.log``). For finding who sent a request; off by default, it costs CPU.
AUDIT_POLICY_VARIABLE = "KOPFLET_AUDIT_POLICY"


def audit_args(logs: Path) -> tuple[str, ...]:
    policy = os.environ.get(AUDIT_POLICY_VARIABLE)
    if not policy:
        return ()
    return (
        f"--audit-policy-file={Path(policy).resolve()}",
        f"--audit-log-path={logs / 'audit.log'}",
        "--audit-log-maxsize=200",
        "--audit-log-maxbackup=1",
    )


def _http_ok(url: str, *, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def admin_ssl_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.cert("admin")), str(pki.key("admin")))
    return context


def apiserver_ready(config: ClusterConfig, pki: Pki) -> bool:
    return _http_ok(f"{config.apiserver_url}/readyz", context=admin_ssl_context(pki))


def prepare(config: ClusterConfig) -> Pki:
    """PKI and the kubeconfigs of the admin and the controller manager."""
    pki = ensure_pki(config.pki_dir, server_ips=(config.host_address,))
    write_kubeconfig(
        config.kubeconfig,
        server=config.apiserver_url,
        ca_file=pki.ca_cert,
        cluster_name=config.name,
        user="kopflet-admin",
        client_cert=pki.cert("admin"),
        client_key=pki.key("admin"),
    )
    write_kubeconfig(
        config.state_dir / "controller-manager.kubeconfig",
        server=config.apiserver_url,
        ca_file=pki.ca_cert,
        cluster_name=config.name,
        user="system:kube-controller-manager",
        client_cert=pki.cert("controller-manager"),
        client_key=pki.key("controller-manager"),
    )
    return pki


def control_plane_components(
    config: ClusterConfig, binaries: Binaries, pki: Pki
) -> list[Component]:
    logs = config.log_dir
    etcd_url = f"http://127.0.0.1:{config.etcd_client_port}"
    etcd = Component(
        name="etcd",
        argv=(
            str(binaries.etcd),
            "--name",
            config.name,
            "--data-dir",
            str(config.state_dir / "etcd"),
            "--listen-client-urls",
            etcd_url,
            "--advertise-client-urls",
            etcd_url,
            "--listen-peer-urls",
            f"http://127.0.0.1:{config.etcd_peer_port}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{config.etcd_peer_port}",
            "--initial-cluster",
            f"{config.name}=http://127.0.0.1:{config.etcd_peer_port}",
            # A local, disposable cluster: fsync buys nothing but latency here.
            "--unsafe-no-fsync",
            "--log-level",
            "warn",
        ),
        log_file=logs / "etcd.log",
        ready=lambda: _http_ok(f"{etcd_url}/health"),
    )
    apiserver = Component(
        name="kube-apiserver",
        argv=(
            str(binaries.kube_apiserver),
            f"--etcd-servers={etcd_url}",
            f"--etcd-prefix=/registry-{config.name}",
            # Only the nodes' bridge: the agents in the node namespaces reach it there, and so
            # does everything on the host.
            f"--bind-address={config.host_address}",
            f"--advertise-address={config.host_address}",
            f"--secure-port={config.apiserver_port}",
            f"--cert-dir={config.pki_dir}",
            f"--tls-cert-file={pki.cert('apiserver')}",
            f"--tls-private-key-file={pki.key('apiserver')}",
            f"--client-ca-file={pki.ca_cert}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-cluster-ip-range={CORE_SERVICE_CIDR}",
            "--allow-privileged=true",
            "--event-ttl=1h",
            "--v=1",
            *audit_args(logs),
        ),
        log_file=logs / "kube-apiserver.log",
        ready=lambda: apiserver_ready(config, pki),
        ready_timeout=120.0,
    )
    kcm_kubeconfig = config.state_dir / "controller-manager.kubeconfig"
    controller_manager = Component(
        name="kube-controller-manager",
        argv=(
            str(binaries.kube_controller_manager),
            f"--kubeconfig={kcm_kubeconfig}",
            f"--authentication-kubeconfig={kcm_kubeconfig}",
            f"--authorization-kubeconfig={kcm_kubeconfig}",
            f"--service-account-private-key-file={pki.sa_key}",
            f"--root-ca-file={pki.ca_cert}",
            f"--cluster-signing-cert-file={pki.ca_cert}",
            f"--cluster-signing-key-file={pki.ca_key}",
            "--use-service-account-credentials=true",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={config.controller_manager_port}",
            "--v=1",
        ),
        log_file=logs / "kube-controller-manager.log",
        ready=lambda: _controller_manager_ready(config),
    )
    return [etcd, apiserver, controller_manager]


def _controller_manager_ready(config: ClusterConfig) -> bool:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return _http_ok(f"https://127.0.0.1:{config.controller_manager_port}/healthz", context=context)


def ca_file(config: ClusterConfig) -> Path:
    return Pki(config.pki_dir).ca_cert
