"""Finding the API server: kubeconfig discovery and the address for the latency probes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from retina_agent.enrichment import KubeConfigError, apiserver_endpoint, load_api_client, node_name
from retina_agent.enrichment.kubeclient import RawCollection
from retina_lab.cluster import apply_crds, metrics_configuration
from retina_lab.kube import KubeEmulator
from tests.enrichment.cluster import namespace, node, pod


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


def test_raw_collection_lists_with_selectors_and_raises_api_errors(
    kube_emulator: KubeEmulator, kube_api_client: kubernetes.client.ApiClient
) -> None:
    kube_emulator.seed(
        [
            node("node-1", "zone-a"),
            namespace("shop"),
            pod("a", "shop", "node-1", ("10.244.1.10",)),
            pod("b", "shop", "node-2", ("10.244.2.10",)),
        ]
    )
    pods = RawCollection(kube_api_client, "/api/v1/pods")
    response = pods(field_selector="spec.nodeName=node-1", limit=10, _request_timeout=(5, 10))
    try:
        body = json.loads(response.read())
    finally:
        response.release_conn()
    assert [p["metadata"]["name"] for p in body["items"]] == ["a"]
    with pytest.raises(ApiException) as gone:
        RawCollection(kube_api_client, "/apis/example.com/v1/nothings")()
    assert gone.value.status == 404
    with pytest.raises(TypeError, match="label_selectr"):
        pods(label_selectr="app=web")


def test_the_agent_watches_without_the_generated_api_classes(kube_emulator: KubeEmulator) -> None:
    """The endpoint cache, the MetricsConfiguration watcher and the latency plugin's look-up of
    the API servers (the Endpoints of default/kubernetes) work without importing a
    generated API module or a model class: those cost the agent about 30 MiB (pydantic
    signatures of every method, the models they name). In a fresh interpreter, since the tests
    themselves use the generated classes."""
    kube_emulator.seed(
        [node("node-1", "zone-a"), namespace("shop"), pod("a", "shop", "node-1", ("10.244.1.10",))]
    )
    apply_crds(kube_emulator)
    kube_emulator.seed([metrics_configuration("only", exclude=["kube-system"])])
    kube_emulator.seed(
        [
            {
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {"name": "kubernetes", "namespace": "default"},
                "subsets": [{"addresses": [{"ip": "10.0.0.5"}], "ports": [{"port": 6443}]}],
            }
        ]
    )
    script = f"""
import sys
from retina_agent.enrichment import EndpointCache, MetricsConfigurationWatcher, load_api_client
api = load_api_client({str(kube_emulator.kubeconfig_path)!r})
cache = EndpointCache(api, "node-1", remote_context=True)
watcher = MetricsConfigurationWatcher(api)
cache.start(); watcher.start()
assert cache.wait_synced(30) and watcher.wait_synced(30), "no sync"
assert cache.lookup("10.244.1.10").podname == "a"
assert watcher.in_force == "only" and watcher.current() is not None
cache.stop(); watcher.stop()
from retina_agent.plugins.latency import cluster_endpoints
assert ("10.0.0.5", 6443) in cluster_endpoints(api), cluster_endpoints(api)
print(sorted(m for m in sys.modules if m.startswith(("kubernetes.client.api.", "kubernetes.client.models."))))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
