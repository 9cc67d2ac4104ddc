"""Both API clients send the ServiceAccount token as the API server expects it, whichever way
the kubernetes client stored it (in-cluster: "bearer <token>", kubeconfig: "Bearer <token>")."""

from __future__ import annotations

import kubernetes
import pytest

from kopflet.agent.kube_client import _bearer_token as agent_bearer_token
from kopflet.controller.kube_api import bearer_token


@pytest.mark.parametrize("stored", ["bearer abc.def", "Bearer abc.def", "BEARER  abc.def"])
def test_token_is_sent_without_its_scheme_prefix(stored: str) -> None:
    configuration = kubernetes.client.Configuration()
    configuration.api_key = {"authorization": stored}
    assert bearer_token(configuration) == "abc.def"
    assert agent_bearer_token(configuration) == "abc.def"
