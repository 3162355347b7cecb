"""Connect pod-level metrics to the cluster: a Kubernetes client, the endpoint cache, the
MetricsConfiguration watcher. The ``kubernetes`` package is imported only here, only when
pod-level metrics are on."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from retina_agent.config import AgentConfig
from retina_agent.podlevel import PodLevel

log = logging.getLogger(__name__)


def kube_api_client(kubeconfig: str | None):
    """In-cluster config first, then the kubeconfig file (option, $KUBECONFIG, ~/.kube/config)."""
    from kubernetes import client, config

    if kubeconfig is None:
        try:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        except config.ConfigException:
            pass
        kubeconfig = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    if not Path(kubeconfig).is_file():
        raise FileNotFoundError(f"no in-cluster service account and no kubeconfig at "
                                f"{kubeconfig} (set podLevel.kubeconfig)")
    return config.new_client_from_config(config_file=kubeconfig)


def node_name(config: AgentConfig) -> str:
    return config.pod_level.node_name or os.environ.get("NODE_NAME") or socket.gethostname()


def build_pod_level(config: AgentConfig) -> PodLevel:
    """PodLevel wired to the cluster; without a reachable configuration, unresolved (logged)."""
    cache = watcher = None
    try:
        from retina_agent.enrichment import EndpointCache, MetricsConfigurationWatcher

        api = kube_api_client(config.pod_level.kubeconfig)
        cache = EndpointCache(api, node_name(config), remote_context=config.remote_context)
        watcher = MetricsConfigurationWatcher(api)
    except Exception as exc:
        log.warning("pod-level metrics without Kubernetes: addresses stay unresolved (%s)", exc)
    return PodLevel(remote=config.remote_context, annotations=config.enable_annotations,
                    bypass_filter=config.bypass_lookup_ip_of_interest,
                    max_series=config.pod_level.max_series, cache=cache, watcher=watcher)
