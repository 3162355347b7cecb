"""What an IP address resolves to, and how a pod's owner references become a workload.

Workload rules (the same as Retina's): a pod's controller owner decides its workload.

* ``ReplicaSet`` -> the ReplicaSet's own controller owner (``Deployment web``); a ReplicaSet
  without an owner is its own workload (``ReplicaSet web-5d8f``). While the ReplicaSet is not
  known yet, the pod's ``pod-template-hash`` label strips the hash suffix from the name, which
  is how a Deployment names its ReplicaSets.
* ``Job`` -> the Job's controller owner (``CronJob backup``), else ``Job <name>``.
* any other owner (``StatefulSet``, ``DaemonSet``, a custom controller) is the workload itself.
* a bare pod (no owner references) has workload kind and name ``unknown``: there is no
  workload, and ``unknown`` is what every unresolved label says.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What an IP resolves to; ``unknown`` for anything that could not be resolved."""

    ip: str
    namespace: str
    podname: str
    workload_kind: str
    workload_name: str
    node: str
    service: str
    zone: str


UNKNOWN_ENDPOINT = Endpoint("", UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN)

#: Owner of a ReplicaSet or Job: (kind, name), or None when it has no controller owner.
Owner = tuple[str, str] | None


def intern(text: str | None) -> str:
    """Share one copy of strings that repeat across thousands of pods (namespaces, nodes...)."""
    return sys.intern(text) if text else UNKNOWN


def controller_owner(meta: dict) -> Owner:
    """The ``(kind, name)`` of the controller owner reference (else the first one), or None."""
    refs = meta.get("ownerReferences") or []
    ref = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    if not ref or not ref.get("kind") or not ref.get("name"):
        return None
    return intern(ref["kind"]), intern(ref["name"])


def resolve_workload(
    owner: Owner,
    template_hash: str | None,
    replicasets: dict[tuple[str, str], Owner],
    jobs: dict[tuple[str, str], Owner],
    namespace: str,
) -> tuple[str, str]:
    """The pod's workload ``(kind, name)`` from its owner and the known ReplicaSets and Jobs."""
    if owner is None:
        return UNKNOWN, UNKNOWN
    kind, name = owner
    if kind == "ReplicaSet":
        key = (namespace, name)
        if key in replicasets:
            return replicasets[key] or owner
        if template_hash and name.endswith("-" + template_hash):
            return "Deployment", intern(name[: -len(template_hash) - 1])
        return owner
    if kind == "Job":
        return jobs.get((namespace, name)) or owner
    return owner
