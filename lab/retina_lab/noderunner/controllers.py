"""The workload controllers of kube-controller-manager, as far as the installer's manifests
need them: DaemonSet -> one pod per fitting node, Deployment -> ReplicaSet -> pods, Job -> pod
(with ``backoffLimit``, ``activeDeadlineSeconds`` and the Job conditions), each pod owned by
its controller (``ownerReferences``), so deleting the owner deletes the pods.

Each ``sync`` reads the current objects and converges once; the runner calls it in a loop.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import logging
import secrets
from typing import Any

from retina_lab.noderunner.client import ApiClient, ApiFailure
from retina_lab.noderunner.podspec import UnsupportedSpec
from retina_lab.noderunner.scheduling import fits

log = logging.getLogger(__name__)
Obj = dict[str, Any]
HASH_LABEL = "pod-template-hash"
DS_HASH_LABEL = "controller-revision-hash"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age(timestamp: str | None) -> float:
    if not timestamp:
        return 0.0
    then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    return (datetime.datetime.now(datetime.UTC) - then).total_seconds()


def template_hash(template: Obj) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def owner_ref(owner: Obj) -> Obj:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owned_by(obj: Obj, owner: Obj) -> bool:
    return any(r.get("uid") == owner["metadata"]["uid"] for r in obj["metadata"].get("ownerReferences") or [])


def pod_ready(pod: Obj) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def max_unavailable(ds: Obj, desired: int) -> int:
    """``spec.updateStrategy.rollingUpdate.maxUnavailable`` as a pod count (default 1; a percentage
    of the desired pods rounded up, as the DaemonSet controller does; at least 1)."""
    value = ((ds["spec"].get("updateStrategy") or {}).get("rollingUpdate") or {}).get("maxUnavailable", 1)
    if isinstance(value, str) and value.endswith("%"):
        return max(1, -(-desired * int(value[:-1]) // 100))
    return max(1, int(value))


def new_pod(owner: Obj, template: Obj, name_prefix: str, extra_labels: dict[str, str]) -> Obj:
    meta = copy.deepcopy(template.get("metadata") or {})
    meta["labels"] = {**(meta.get("labels") or {}), **extra_labels}
    meta["generateName"] = f"{name_prefix}-"
    meta["namespace"] = owner["metadata"]["namespace"]
    meta["ownerReferences"] = [owner_ref(owner)]
    spec = copy.deepcopy(template["spec"])
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


class Controllers:
    """DaemonSet, Deployment, ReplicaSet and Job controllers over one API client."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api

    def sync(self) -> None:
        self._service_accounts()
        pods = self.api.list("/api/v1/pods")
        nodes = self.api.list("/api/v1/nodes")
        for ds in self.api.list("/apis/apps/v1/daemonsets"):
            self._guard(self._daemonset, ds, pods, nodes)
        for deploy in self.api.list("/apis/apps/v1/deployments"):
            self._guard(self._deployment, deploy)
        for rs in self.api.list("/apis/apps/v1/replicasets"):
            self._guard(self._replicaset, rs, pods)
        for job in self.api.list("/apis/batch/v1/jobs"):
            self._guard(self._job, job, pods)

    def _guard(self, fn: Any, obj: Obj, *args: Any) -> None:
        if obj["metadata"].get("deletionTimestamp"):
            return
        try:
            fn(obj, *args)
        except ApiFailure as exc:
            if exc.code not in (404, 409):  # deleted or changed meanwhile: next round
                log.warning("%s %s: %s", obj["kind"], obj["metadata"]["name"], exc)

    def _create_pod(self, pod: Obj) -> Obj:
        return self.api.create(f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods", pod)

    def _status(self, path: str, status: Obj, current: Obj) -> None:
        if {k: v for k, v in (current.get("status") or {}).items() if k in status} != status:
            self.api.patch(f"{path}/status", {"status": status})

    # -- ServiceAccount: a "default" in every namespace -----------------------------------------
    def _service_accounts(self) -> None:
        have = {
            sa["metadata"]["namespace"]
            for sa in self.api.list("/api/v1/serviceaccounts", fieldSelector="metadata.name=default")
        }
        for ns in self.api.list("/api/v1/namespaces"):
            name = ns["metadata"]["name"]
            if name not in have and not ns["metadata"].get("deletionTimestamp"):
                try:
                    self.api.create(
                        f"/api/v1/namespaces/{name}/serviceaccounts",
                        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}},
                    )
                except ApiFailure as exc:
                    if exc.code not in (404, 409):
                        raise

    # -- DaemonSet ----------------------------------------------------------------------------
    def _daemonset(self, ds: Obj, pods: list[Obj], nodes: list[Obj]) -> None:
        ns, name = ds["metadata"]["namespace"], ds["metadata"]["name"]
        template = ds["spec"]["template"]
        revision = template_hash(template)
        mine = [p for p in pods if owned_by(p, ds) and not p["metadata"].get("deletionTimestamp")]
        wanted = []
        for node in nodes:
            try:
                if fits(template["spec"], node) is None:
                    wanted.append(node["metadata"]["name"])
            except UnsupportedSpec:
                wanted.append(node["metadata"]["name"])  # the kubelet fails the pod with the reason
        by_node: dict[str, list[Obj]] = {}
        for pod in mine:
            by_node.setdefault(pod["spec"].get("nodeName", ""), []).append(pod)
        for node_name, node_pods in by_node.items():
            if node_name not in wanted:
                for pod in node_pods:
                    self.api.delete(f"/api/v1/namespaces/{ns}/pods/{pod['metadata']['name']}")
        # RollingUpdate: delete outdated pods (not-ready ones first) while at most maxUnavailable
        # nodes are without a ready pod; the next pass starts the new revision on a freed node.
        outdated = sorted(
            (
                p
                for n in wanted
                for p in by_node.get(n, [])
                if p["metadata"]["labels"].get(DS_HASH_LABEL) != revision
            ),
            key=pod_ready,
        )
        unavailable = sum(1 for n in wanted if not any(pod_ready(p) for p in by_node.get(n, [])))
        budget = max_unavailable(ds, len(wanted)) - unavailable
        for pod in outdated:
            if pod_ready(pod) and budget <= 0:
                break
            self.api.delete(f"/api/v1/namespaces/{ns}/pods/{pod['metadata']['name']}")
            budget -= pod_ready(pod)
        for node_name in wanted:
            if by_node.get(node_name):
                continue
            pod = new_pod(ds, template, name, {DS_HASH_LABEL: revision})
            # As the DaemonSet controller does: pin by node affinity on the node's name.
            pod["spec"].setdefault("affinity", {})["nodeAffinity"] = {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node_name]}]}
                    ]
                }
            }
            pod["spec"]["nodeName"] = node_name
            self._create_pod(pod)
        current = [p for n in wanted for p in by_node.get(n, [])]
        ready = sum(1 for p in current if pod_ready(p))
        updated = sum(1 for p in current if p["metadata"]["labels"].get(DS_HASH_LABEL) == revision)
        self._status(
            f"/apis/apps/v1/namespaces/{ns}/daemonsets/{name}",
            {
                "desiredNumberScheduled": len(wanted),
                "currentNumberScheduled": len(current),
                "numberReady": ready,
                "numberAvailable": ready,
                "numberUnavailable": len(wanted) - ready,
                "updatedNumberScheduled": updated,
                "numberMisscheduled": 0,
                "observedGeneration": ds["metadata"].get("generation", 1),
            },
            ds,
        )

    # -- Deployment -> ReplicaSet -------------------------------------------------------------
    def _deployment(self, deploy: Obj) -> None:
        ns, name = deploy["metadata"]["namespace"], deploy["metadata"]["name"]
        template = deploy["spec"]["template"]
        revision = template_hash(template)
        replicas = deploy["spec"].get("replicas", 1)
        sets = [
            rs for rs in self.api.list(f"/apis/apps/v1/namespaces/{ns}/replicasets") if owned_by(rs, deploy)
        ]
        current = next((rs for rs in sets if rs["metadata"]["labels"].get(HASH_LABEL) == revision), None)
        old = [rs for rs in sets if rs is not current]
        for rs in old:
            if rs["spec"].get("replicas", 1) != 0:
                self.api.patch(
                    f"/apis/apps/v1/namespaces/{ns}/replicasets/{rs['metadata']['name']}",
                    {"spec": {"replicas": 0}},
                )
        recreate = (deploy["spec"].get("strategy") or {}).get("type") == "Recreate"
        old_running = sum((rs.get("status") or {}).get("replicas", 0) for rs in old)
        if current is None:
            labels = {**(template.get("metadata") or {}).get("labels", {}), HASH_LABEL: revision}
            tmpl = copy.deepcopy(template)
            tmpl.setdefault("metadata", {})["labels"] = labels
            selector = copy.deepcopy(deploy["spec"]["selector"])
            selector.setdefault("matchLabels", {})[HASH_LABEL] = revision
            current = self.api.create(
                f"/apis/apps/v1/namespaces/{ns}/replicasets",
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "metadata": {
                        "name": f"{name}-{revision}",
                        "namespace": ns,
                        "labels": labels,
                        "ownerReferences": [owner_ref(deploy)],
                    },
                    "spec": {
                        "replicas": 0 if recreate and old_running else replicas,
                        "selector": selector,
                        "template": tmpl,
                    },
                },
            )
        elif current["spec"].get("replicas", 1) != replicas and not (recreate and old_running):
            self.api.patch(
                f"/apis/apps/v1/namespaces/{ns}/replicasets/{current['metadata']['name']}",
                {"spec": {"replicas": replicas}},
            )
        st = current.get("status") or {}
        ready = st.get("readyReplicas", 0)
        self._status(
            f"/apis/apps/v1/namespaces/{ns}/deployments/{name}",
            {
                "replicas": st.get("replicas", 0) + old_running,
                "updatedReplicas": st.get("replicas", 0),
                "readyReplicas": ready,
                "availableReplicas": ready,
                "unavailableReplicas": max(0, replicas - ready),
                "observedGeneration": deploy["metadata"].get("generation", 1),
                "conditions": [
                    {
                        "type": "Available",
                        "status": "True" if ready >= replicas else "False",
                        "reason": "MinimumReplicasAvailable"
                        if ready >= replicas
                        else "MinimumReplicasUnavailable",
                    }
                ],
            },
            deploy,
        )

    def _replicaset(self, rs: Obj, pods: list[Obj]) -> None:
        ns, name = rs["metadata"]["namespace"], rs["metadata"]["name"]
        mine = [p for p in pods if owned_by(p, rs) and not p["metadata"].get("deletionTimestamp")]
        alive = [p for p in mine if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
        for pod in mine:
            if pod not in alive:  # a failed pod of a ReplicaSet is replaced
                self.api.delete(f"/api/v1/namespaces/{ns}/pods/{pod['metadata']['name']}")
        wanted = rs["spec"].get("replicas", 1)
        for pod in alive[wanted:]:
            self.api.delete(f"/api/v1/namespaces/{ns}/pods/{pod['metadata']['name']}")
        for _ in range(wanted - len(alive)):
            self._create_pod(new_pod(rs, rs["spec"]["template"], name, {}))
        kept = alive[:wanted]
        ready = sum(1 for p in kept if pod_ready(p))
        self._status(
            f"/apis/apps/v1/namespaces/{ns}/replicasets/{name}",
            {
                "replicas": len(kept),
                "readyReplicas": ready,
                "availableReplicas": ready,
                "fullyLabeledReplicas": len(kept),
                "observedGeneration": rs["metadata"].get("generation", 1),
            },
            rs,
        )

    # -- Job ----------------------------------------------------------------------------------
    def _job(self, job: Obj, pods: list[Obj]) -> None:
        ns, name, uid = job["metadata"]["namespace"], job["metadata"]["name"], job["metadata"]["uid"]
        status = copy.deepcopy(job.get("status") or {})
        conditions = status.get("conditions") or []
        if any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions):
            return
        spec = job["spec"]
        mine = [p for p in pods if owned_by(p, job)]
        succeeded = sum(1 for p in mine if (p.get("status") or {}).get("phase") == "Succeeded")
        failed = sum(1 for p in mine if (p.get("status") or {}).get("phase") == "Failed")
        active = [p for p in mine if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
        status.setdefault("startTime", now())
        status.update(
            {
                "active": len(active),
                "succeeded": succeeded,
                "failed": failed,
                "ready": sum(1 for p in active if pod_ready(p)),
            }
        )
        completions = spec.get("completions", 1)
        deadline = spec.get("activeDeadlineSeconds")
        finished: tuple[str, str, str] | None = None
        if succeeded >= completions:
            finished = ("Complete", "", "")
        elif failed > spec.get("backoffLimit", 6):
            finished = ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
        elif deadline is not None and _age(status["startTime"]) > deadline:
            finished = ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
        if finished is not None:
            kind, reason, message = finished
            for pod in active:
                self.api.delete(f"/api/v1/namespaces/{ns}/pods/{pod['metadata']['name']}")
            status["active"], status["ready"] = 0, 0
            stamp = now()
            criteria = "SuccessCriteriaMet" if kind == "Complete" else "FailureTarget"
            status["conditions"] = conditions + [
                {
                    "type": criteria,
                    "status": "True",
                    "reason": reason or "CompletionsReached",
                    "message": message or "Reached expected number of succeeded pods",
                    "lastProbeTime": stamp,
                    "lastTransitionTime": stamp,
                },
                {
                    "type": kind,
                    "status": "True",
                    "reason": reason or "CompletionsReached",
                    "message": message or "Reached expected number of succeeded pods",
                    "lastProbeTime": stamp,
                    "lastTransitionTime": stamp,
                },
            ]
            if kind == "Complete":
                status["completionTime"] = stamp
        elif not active:
            labels = {
                "batch.kubernetes.io/controller-uid": uid,
                "batch.kubernetes.io/job-name": name,
                "controller-uid": uid,
                "job-name": name,
            }
            pod = new_pod(job, spec["template"], name, labels)
            pod["spec"]["restartPolicy"] = spec["template"]["spec"].get("restartPolicy", "Never")
            self._create_pod(pod)
            status["active"] = 1
        if status != (job.get("status") or {}):
            self.api.patch(f"/apis/batch/v1/namespaces/{ns}/jobs/{name}/status", {"status": status})


def random_suffix() -> str:
    return secrets.token_hex(3)[:5]
