"""Grafana dashboards for the agent's metrics, built with grafana-foundation-sdk.

``python -m retina_dashboards.build`` writes one JSON file per dashboard into the installer's
``dashboards`` role (``collections/retina/roles/dashboards/files/dashboards``).  Each dashboard
module has a ``build() -> dict`` returning the Grafana JSON model.
"""

from retina_dashboards.common import EMPTY_WHEN_HEALTHY, NEEDS_POD_LEVEL, NEEDS_REMOTE_CONTEXT

__all__ = ["EMPTY_WHEN_HEALTHY", "NEEDS_POD_LEVEL", "NEEDS_REMOTE_CONTEXT"]
