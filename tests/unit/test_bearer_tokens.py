"""Both API clients send the ServiceAccount token as the API server expects it, whichever way
the kubernetes client stored it (in-cluster: "bearer <token>", kubeconfig: "Bearer <token>")."""

from __future__ import annotations

import kubernetes
import pytest

from kopflet.agent.kube_client import TOKEN_REREAD_SECONDS, KubeClient
from kopflet.agent.kube_client import _bearer_token as agent_bearer_token
from kopflet.controller.kube_api import bearer_token


@pytest.mark.parametrize("stored", ["bearer abc.def", "Bearer abc.def", "BEARER  abc.def"])
def test_token_is_sent_without_its_scheme_prefix(stored: str) -> None:
    configuration = kubernetes.client.Configuration()
    configuration.api_key = {"authorization": stored}
    assert bearer_token(configuration) == "abc.def"
    assert agent_bearer_token(configuration) == "abc.def"


def test_agent_reads_its_token_again_once_a_minute_or_after_a_refusal() -> None:
    configuration = kubernetes.client.Configuration()
    configuration.host = "https://127.0.0.1:6443"
    configuration.api_key = {"authorization": "Bearer first"}
    reads: list[str] = []

    def hook(config: kubernetes.client.Configuration) -> None:
        reads.append("read")

    configuration.refresh_api_key_hook = hook
    now = [0.0]
    client = KubeClient(configuration, clock=lambda: now[0])
    assert client._headers(None)["Authorization"] == "Bearer first"
    per_read = len(reads)
    configuration.api_key = {"authorization": "Bearer rotated"}
    now[0] = TOKEN_REREAD_SECONDS - 1
    assert client._headers(None)["Authorization"] == "Bearer first"  # not read per request
    assert len(reads) == per_read
    now[0] = TOKEN_REREAD_SECONDS
    assert client._headers(None)["Authorization"] == "Bearer rotated"
    configuration.api_key = {"authorization": "Bearer again"}
    client.forget_token()  # a 401
    assert client._headers(None)["Authorization"] == "Bearer again"
    assert len(reads) == 3 * per_read
