"""Pod-level context for the agent: the IP-to-endpoint cache and the MetricsConfiguration.

Both are fed by watches through the ``kubernetes`` client and never block the metrics path:
``EndpointCache.lookup`` and ``MetricsConfigurationWatcher.current`` read memory only.
"""

from retina_agent.enrichment.cache import EndpointCache
from retina_agent.enrichment.endpoint import UNKNOWN, UNKNOWN_ENDPOINT, Endpoint
from retina_agent.enrichment.kubeclient import (
    KubeConfigError,
    apiserver_endpoint,
    load_api_client,
    node_name,
)
from retina_agent.enrichment.metricsconfig import (
    CONTEXT_LABELS,
    METRIC_NAMES,
    ContextOption,
    MetricsConfigurationWatcher,
    MetricsSpec,
    SpecError,
    validate_spec,
)

__all__ = [
    "CONTEXT_LABELS",
    "METRIC_NAMES",
    "UNKNOWN",
    "UNKNOWN_ENDPOINT",
    "ContextOption",
    "Endpoint",
    "EndpointCache",
    "KubeConfigError",
    "MetricsConfigurationWatcher",
    "MetricsSpec",
    "SpecError",
    "apiserver_endpoint",
    "load_api_client",
    "node_name",
    "validate_spec",
]
