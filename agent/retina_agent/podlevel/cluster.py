"""Connect pod-level metrics to the cluster: a Kubernetes client, the endpoint cache, the
MetricsConfiguration watcher. The ``kubernetes`` package is imported only here, only when
pod-level metrics are on."""

from __future__ import annotations

import logging

from retina_agent.config import AgentConfig
from retina_agent.podlevel import PodLevel
from retina_agent.podlevel.malloc import return_large_buffers

log = logging.getLogger(__name__)


def build_pod_level(config: AgentConfig) -> PodLevel:
    """PodLevel wired to the cluster; without a reachable configuration, unresolved (logged)."""
    return_large_buffers()  # its scrapes make buffers of several MiB (see malloc.py)
    cache = watcher = api = None
    try:
        from retina_agent.enrichment import (
            EndpointCache,
            MetricsConfigurationWatcher,
            load_api_client,
            node_name,
        )

        api = load_api_client(config.pod_level.kubeconfig)
        cache = EndpointCache(
            api,
            node_name(config.pod_level.node_name),
            remote_context=config.remote_context,
            watch_services=config.remote_context,
        )
        watcher = MetricsConfigurationWatcher(api)
    except Exception as exc:
        log.warning("pod-level metrics without Kubernetes: addresses stay unresolved (%s)", exc)
    pod_level = PodLevel(
        remote=config.remote_context,
        annotations=config.enable_annotations,
        bypass_filter=config.bypass_lookup_ip_of_interest,
        max_series=config.pod_level.max_series,
        cache=cache,
        watcher=watcher,
    )
    pod_level.api_client = api
    return pod_level
