"""Calls the components make that the suites elsewhere do not reach, made with the component's
production identity (its ServiceAccount token and the RBAC the role renders)."""

from __future__ import annotations

from retina_agent.plugins.latency import cluster_endpoints
from tests.kube_fixtures import AGENT_USER, refusals_of


def test_latency_finds_the_api_servers_behind_the_kubernetes_service(kube_emulator, agent_api_client) -> None:
    """The latency plugin measures the real API servers, i.e. the Endpoints of default/kubernetes
    (kube-apiserver keeps them); the agent's role must let it read them (it did not: a silent 403)."""
    kube_emulator.seed(
        [
            {
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {"name": "kubernetes", "namespace": "default"},
                "subsets": [
                    {
                        "addresses": [{"ip": "10.0.0.5"}, {"ip": "10.0.0.6"}],
                        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
                    }
                ],
            }
        ]
    )
    assert cluster_endpoints(agent_api_client) == [
        ("127.0.0.1", kube_emulator.port),
        ("10.0.0.5", 6443),
        ("10.0.0.6", 6443),
    ]
    assert refusals_of(kube_emulator, AGENT_USER) == []
