"""A Kubernetes-like node built from Linux namespaces, for the demo, tests and benchmarks.

A ``LabNode`` is a bridge (like the bridge CNI's ``cni0``) plus one network namespace per
"pod", each joined to the bridge by a veth pair whose host side is named like a CNI's.
Everything it creates carries a per-lab prefix so that several labs can coexist and
``cleanup_stale`` can remove what a crashed run left behind.
"""

from retina_lab.node import LabNode, LabPod, cleanup_stale

__all__ = ["LabNode", "LabPod", "cleanup_stale"]
