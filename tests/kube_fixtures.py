"""Pytest plugin: a Kubernetes API emulator over real HTTP, and a real client for it.

Enable with ``pytest_plugins = ["tests.kube_fixtures"]`` in the top-level conftest, or import
the fixtures into a directory's conftest (``from tests.kube_fixtures import kube_emulator``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest

from retina_lab.kube import KubeEmulator


@pytest.fixture
def kube_emulator(tmp_path: Path) -> Iterator[KubeEmulator]:
    """A fresh, running emulator; ``kube_emulator.kubeconfig_path`` points clients at it."""
    with KubeEmulator(workdir=tmp_path) as kube:
        yield kube


@pytest.fixture
def kube_api_client(kube_emulator: KubeEmulator) -> Iterator[kubernetes.client.ApiClient]:
    """A real ``kubernetes`` API client configured from the emulator's kubeconfig."""
    client = kubernetes.config.new_client_from_config(config_file=str(kube_emulator.kubeconfig_path))
    try:
        yield client
    finally:
        client.close()


def small_cluster(kube: KubeEmulator) -> None:
    """Seed three Linux nodes, one Windows node, namespaces ``web`` (labelled ``team=web``) and
    ``db``, and running pods with IPs: web/a on node-1, web/b on node-2, db/c on node-3."""
    nodes = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {
        "kubernetes.io/os": os_name, "kubernetes.io/hostname": name}}}
        for name, os_name in (("node-1", "linux"), ("node-2", "linux"), ("node-3", "linux"),
                              ("win-1", "windows"))]
    namespaces = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"team": ns}}}
                  for ns in ("web", "db")]
    pods = [{"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
             "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
             "status": {"phase": "Running", "podIP": ip}}
            for name, ns, app, node, ip in (("a", "web", "frontend", "node-1", "10.244.1.10"),
                                            ("b", "web", "frontend", "node-2", "10.244.2.10"),
                                            ("c", "db", "postgres", "node-3", "10.244.3.10"))]
    kube.seed(nodes + namespaces + pods)
