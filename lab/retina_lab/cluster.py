"""Kubernetes objects that describe a lab node's pods, for the API emulator."""

from __future__ import annotations

from pathlib import Path

import yaml

from retina_lab import LabNode
from retina_lab.kube import KubeEmulator

NODE = "lab-node"
CRDS = Path(__file__).resolve().parents[2] / "collections/retina/roles/agent/files/crds"


def owner(kind: str, name: str, uid: str, api_version: str = "apps/v1") -> dict:
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "controller": True}


def pod(
    name: str,
    namespace: str,
    ip: str,
    owners: list[dict] | None = None,
    node: str = NODE,
    labels: dict | None = None,
    annotations: dict | None = None,
) -> dict:
    meta = {
        "name": name,
        "namespace": namespace,
        "labels": labels or {"app": name},
        "ownerReferences": owners or [],
    }
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def seed_lab(kube: KubeEmulator, node: LabNode, *, web_ns: str = "shop", db_ns: str = "data") -> None:
    """Pod a: Deployment ``web`` in ``shop``; pod b: StatefulSet ``db`` in ``data``."""
    objects = [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": NODE, "labels": {"topology.kubernetes.io/zone": "zone-1"}},
        },
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": web_ns}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": db_ns}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": web_ns, "uid": "dep-web"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "nginx"}]},
                },
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": "web-5d9c",
                "namespace": web_ns,
                "uid": "rs-web",
                "ownerReferences": [owner("Deployment", "web", "dep-web")],
            },
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "nginx"}]},
                },
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": db_ns, "uid": "sts-db"},
            "spec": {
                "serviceName": "db",
                "selector": {"matchLabels": {"app": "db"}},
                "template": {
                    "metadata": {"labels": {"app": "db"}},
                    "spec": {"containers": [{"name": "c", "image": "postgres"}]},
                },
            },
        },
        pod(
            "web-5d9c-x7k2p",
            web_ns,
            node["a"].ip,
            [owner("ReplicaSet", "web-5d9c", "rs-web")],
            labels={"app": "web"},
        ),
        pod("db-0", db_ns, node["b"].ip, [owner("StatefulSet", "db", "sts-db")], labels={"app": "db"}),
    ]
    kube.seed(objects)


def apply_crds(kube: KubeEmulator) -> None:
    crds = [yaml.safe_load(p.read_text()) for p in sorted(CRDS.glob("*.yaml"))]
    kube.seed(crds)


def metrics_configuration(
    name: str,
    *,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    options: list[dict] | None = None,
) -> dict:
    namespaces = {}
    if include is not None:
        namespaces["include"] = include
    if exclude is not None:
        namespaces["exclude"] = exclude
    return {
        "apiVersion": "retina.sh/v1alpha1",
        "kind": "MetricsConfiguration",
        "metadata": {"name": name},
        "spec": {
            "contextOptions": options
            or [
                {
                    "metricName": m,
                    "sourceLabels": ["ip", "namespace", "podname", "workload"],
                    "destinationLabels": ["ip", "namespace", "podname", "workload"],
                    "additionalLabels": ["direction"],
                }
                for m in ("forward_count", "forward_bytes", "drop_count", "tcpflags_count")
            ],
            "namespaces": namespaces,
        },
    }
