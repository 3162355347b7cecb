"""Kubernetes objects for the enrichment tests: workloads with owner references, as controllers
would have made them (the emulator has no controllers, so the tests write what they would)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

Obj = dict[str, Any]


def owned_by(owner: Obj) -> list[Obj]:
    meta = owner["metadata"]
    return [
        {
            "apiVersion": owner["apiVersion"],
            "kind": owner["kind"],
            "name": meta["name"],
            "uid": meta["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def workload(
    api_version: str,
    kind: str,
    name: str,
    namespace: str,
    owner: Obj | None = None,
    labels: dict[str, str] | None = None,
) -> Obj:
    meta: Obj = {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()), "labels": labels or {}}
    if owner is not None:
        meta["ownerReferences"] = owned_by(owner)
    return {"apiVersion": api_version, "kind": kind, "metadata": meta, "spec": {}}


def pod(
    name: str,
    namespace: str,
    node: str,
    ips: tuple[str, ...],
    owner: Obj | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    phase: str = "Running",
    host_network: bool = False,
) -> Obj:
    meta: Obj = {
        "name": name,
        "namespace": namespace,
        "labels": labels or {},
        "annotations": annotations or {},
    }
    if owner is not None:
        meta["ownerReferences"] = owned_by(owner)
    status: Obj = {"phase": phase}
    if ips:
        status["podIP"] = ips[0]
        status["podIPs"] = [{"ip": ip} for ip in ips]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "nodeName": node,
            "hostNetwork": host_network,
            "containers": [{"name": "c", "image": "busybox"}],
        },
        "status": status,
    }


def namespace(name: str, annotations: dict[str, str] | None = None) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "annotations": annotations or {}},
    }


def node(name: str, zone: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone},
        },
    }


def service(name: str, namespace: str, selector: dict[str, str], cluster_ip: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": selector,
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ports": [{"port": 80}],
        },
    }


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def start_pod(kube: Any, core: Any, obj: Obj) -> None:
    """Create a pod through the API (which drops its status), then give it the status the
    kubelet would (phase and IPs)."""
    meta = obj["metadata"]
    status = obj.pop("status")
    core.create_namespaced_pod(meta["namespace"], obj)
    kube.set_status("Pod", meta["namespace"], meta["name"], status)
