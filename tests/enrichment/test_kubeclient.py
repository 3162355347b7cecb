"""Finding the API server: kubeconfig discovery and the address for the latency probes."""

from __future__ import annotations

from pathlib import Path

import kubernetes
import pytest

from retina_agent.enrichment import KubeConfigError, apiserver_endpoint, load_api_client, node_name
from retina_lab.kube import KubeEmulator


def test_kubeconfig_discovery_reaches_the_emulator(
    kube_emulator: KubeEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    explicit = load_api_client(kube_emulator.kubeconfig_path)
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'missing'}:{kube_emulator.kubeconfig_path}")
    from_env = load_api_client()
    for client in (explicit, from_env):
        try:
            assert kubernetes.client.VersionApi(client).get_code().git_version.endswith("emulator")
            assert apiserver_endpoint(client) == ("127.0.0.1", kube_emulator.port)
        finally:
            client.close()
    with pytest.raises(KubeConfigError, match="does not exist"):
        load_api_client(tmp_path / "nope")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(KubeConfigError, match="set KUBECONFIG"):
        load_api_client()


def test_apiserver_endpoint_resolves_host_names() -> None:
    config = kubernetes.client.Configuration()
    for host, expected in [
        ("https://localhost:6443", ("127.0.0.1", 6443)),
        ("https://10.96.0.1", ("10.96.0.1", 443)),
        ("http://[::1]:8080", ("::1", 8080)),
    ]:
        config.host = host
        client = kubernetes.client.ApiClient(config)
        try:
            assert apiserver_endpoint(client) == expected
        finally:
            client.close()


def test_node_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "node-7")
    assert node_name() == "node-7"
    assert node_name("explicit") == "explicit"
    monkeypatch.delenv("NODE_NAME")
    assert node_name()
