"""The node runner: this machine as Kubernetes nodes for the API emulator.

Workloads in the API (DaemonSet, Deployment/ReplicaSet, Job, plain Pods) become real podman
containers run exactly as their pod specs say; their status goes back to the API, and
``pods/log``/``pods/exec`` come from the real containers. See :class:`NodeRunner`.
"""

from retina_lab.noderunner.podspec import UnsupportedSpec
from retina_lab.noderunner.runner import NodeRunner

__all__ = ["NodeRunner", "UnsupportedSpec"]
