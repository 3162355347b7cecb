"""The test lab: what tests, benchmarks and scripts need beyond the product. Not installed (the
wheel and the images leave it out); pytest, bench/ and scripts/ put ``lab/`` on the path.

``kube`` (the Kubernetes API emulator), ``manifests`` (schema validation), ``prometheus`` (a real
Prometheus server), ``traffic`` and ``delay`` (traffic between pods), ``agent`` (the agent's TC
filters, CPU and memory). The demo node and the agent process are product code
(``retina_agent.demo``), imported here so tests keep one name for them.
"""

from retina_agent.demo.node import LabNode, LabPod, cleanup_stale

__all__ = ["LabNode", "LabPod", "cleanup_stale"]
