"""Which node a pod may run on: ``nodeName``, ``nodeSelector``, required node affinity
(``matchExpressions`` on labels, ``matchFields`` on ``metadata.name``) and taints/tolerations,
as kube-scheduler's filters decide it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from retina_lab.noderunner.podspec import UnsupportedSpec

Obj = dict[str, Any]


def _requirement(req: Mapping[str, Any], values: Mapping[str, str], where: str) -> bool:
    key, op, wanted = req["key"], req["operator"], list(req.get("values") or [])
    have = values.get(key)
    if op == "In":
        return have in wanted
    if op == "NotIn":
        return have not in wanted
    if op == "Exists":
        return key in values
    if op == "DoesNotExist":
        return key not in values
    if op in ("Gt", "Lt"):
        try:
            a, b = int(have or ""), int(wanted[0])
        except (ValueError, IndexError):
            return False
        return a > b if op == "Gt" else a < b
    raise UnsupportedSpec(f"{where}: operator {op!r} not understood")


def _term_matches(term: Mapping[str, Any], node: Obj) -> bool:
    labels = node["metadata"].get("labels") or {}
    fields = {"metadata.name": node["metadata"]["name"]}
    where = "spec.affinity.nodeAffinity"
    return all(_requirement(r, labels, where) for r in term.get("matchExpressions") or []) and all(
        _requirement(r, fields, where) for r in term.get("matchFields") or []
    )


def tolerates(tolerations: list[Obj], taint: Mapping[str, Any]) -> bool:
    for tol in tolerations:
        if tol.get("effect") and tol["effect"] != taint.get("effect"):
            continue
        if tol.get("operator", "Equal") == "Exists":
            if not tol.get("key") or tol["key"] == taint.get("key"):
                return True
        elif tol.get("key") == taint.get("key") and tol.get("value", "") == taint.get("value", ""):
            return True
    return False


def fits(pod_spec: Mapping[str, Any], node: Obj) -> str | None:
    """``None`` when the pod may run on ``node``, else why not (scheduler wording)."""
    affinity = pod_spec.get("affinity") or {}
    if affinity.get("podAffinity") or affinity.get("podAntiAffinity"):
        raise UnsupportedSpec("spec.affinity: pod (anti-)affinity is not supported by the node runner")
    labels = node["metadata"].get("labels") or {}
    if any(labels.get(k) != v for k, v in (pod_spec.get("nodeSelector") or {}).items()):
        return "node(s) didn't match Pod's node affinity/selector"
    required = (affinity.get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    if required and not any(_term_matches(t, node) for t in required.get("nodeSelectorTerms") or []):
        return "node(s) didn't match Pod's node affinity/selector"
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(
            pod_spec.get("tolerations") or [], taint
        ):
            return f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value', '')}}}"
    return None


#: One node selector term against a node; a PersistentVolume's nodeAffinity too (claims.py).
node_selector_term_matches = _term_matches
