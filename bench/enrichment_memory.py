"""Memory of the endpoint cache with many pods (issue 3: pod-level metrics).

A Kubernetes API emulator in a child process serves N realistic pods (Deployments with
ReplicaSets, Services, 50 nodes in 3 zones); this process runs an ``EndpointCache`` in remote
context (every pod: the worst case) and prints its RSS before and after the sync, the peak, the
bytes per pod and the lookup time. Target: the agent under 200 MiB with 10,000 pods in the cache
(plus the flow series, measured elsewhere).

Run from the repository: ``.venv/bin/python bench/enrichment_memory.py --pods 10000``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

from report import write_report  # bench/report.py

ROOT = Path(__file__).resolve().parents[1]


def realistic_pod(n: int, deployment: dict, rs: dict, node: str) -> dict:
    """A pod about the size of a real one (~2.5 KB of JSON)."""
    name = f"{rs['metadata']['name']}-{n:05x}"
    labels = {
        "app": deployment["metadata"]["name"],
        "pod-template-hash": rs["metadata"]["name"][-6:],
        "team": "shop",
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": rs["metadata"]["namespace"],
            "labels": labels,
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2024-05-01T00:00:00Z"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": rs["metadata"]["name"],
                    "uid": rs["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "nodeName": node,
            "serviceAccountName": "default",
            "containers": [
                {
                    "name": "app",
                    "image": "registry.example.com/shop/app:1.2.3",
                    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                    "env": [{"name": f"SETTING_{i}", "value": f"value-{i}"} for i in range(6)],
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "128Mi"},
                        "limits": {"memory": "256Mi"},
                    },
                    "volumeMounts": [
                        {
                            "name": "kube-api-access",
                            "mountPath": "/var/run/secrets/kubernetes.io",
                            "readOnly": True,
                        }
                    ],
                }
            ],
            "volumes": [
                {
                    "name": "kube-api-access",
                    "projected": {
                        "sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]
                    },
                }
            ],
        },
        "status": {
            "phase": "Running",
            "hostIP": "192.168.0.1",
            "podIP": f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}",
            "podIPs": [{"ip": f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"}],
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": "2024-05-01T00:00:00Z"}
                for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
            ],
            "containerStatuses": [
                {
                    "name": "app",
                    "ready": True,
                    "restartCount": 0,
                    "image": "registry.example.com/shop/app:1.2.3",
                    "imageID": "registry.example.com/shop/app@sha256:" + "0" * 64,
                    "containerID": "containerd://" + "1" * 64,
                    "state": {"running": {"startedAt": "2024-05-01T00:00:00Z"}},
                }
            ],
        },
    }


def cluster(pods: int) -> list[dict]:
    """Nodes, namespaces, Deployments of 20 pods with their ReplicaSets and Services."""
    objects: list[dict] = []
    nodes = [f"node-{i}" for i in range(50)]
    objects += [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": n, "labels": {"topology.kubernetes.io/zone": f"zone-{i % 3}"}},
        }
        for i, n in enumerate(nodes)
    ]
    namespaces = [f"team-{i}" for i in range(20)]
    objects += [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in namespaces]
    for n in range(pods):
        if n % 20 == 0:
            ns = namespaces[(n // 20) % len(namespaces)]
            name = f"app{n // 20}"
            deployment = {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "namespace": ns, "uid": str(uuid.uuid4())},
                "spec": {},
            }
            rs = {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": f"{name}-{n:06x}",
                    "namespace": ns,
                    "uid": str(uuid.uuid4()),
                    "ownerReferences": [
                        {
                            "apiVersion": "apps/v1",
                            "kind": "Deployment",
                            "name": name,
                            "uid": deployment["metadata"]["uid"],
                            "controller": True,
                        }
                    ],
                },
                "spec": {},
            }
            service = {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "selector": {"app": name},
                    "ports": [{"port": 80}],
                    "clusterIP": f"172.20.{n // 5120}.{(n // 20) % 256}",
                },
            }
            objects += [deployment, rs, service]
        objects.append(realistic_pod(n, deployment, rs, nodes[n % len(nodes)]))
    return objects


def serve(pods: int) -> None:
    """Child process: run the emulator with the cluster, print the kubeconfig, wait for stdin."""
    from retina_lab.kube import KubeEmulator

    with KubeEmulator(history_limit=100) as kube:
        kube.seed(cluster(pods))
        print(
            json.dumps(
                {
                    "kubeconfig": str(kube.kubeconfig_path),
                    "pod_json_bytes": len(json.dumps(kube.objects("Pod"))),
                }
            ),
            flush=True,
        )
        sys.stdin.read()


def rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(pods: int) -> dict:
    import kubernetes

    from retina_agent.enrichment import EndpointCache

    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--pods", str(pods)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        info = json.loads(child.stdout.readline())
        client = kubernetes.config.new_client_from_config(config_file=info["kubeconfig"])
        gc.collect()
        before = rss_kib()
        cache = EndpointCache(client, "node-0", remote_context=True)
        started = time.monotonic()
        cache.start()
        if not cache.wait_synced(600):
            raise RuntimeError("the cache did not sync in 600 s")
        synced_s = time.monotonic() - started
        time.sleep(1)
        gc.collect()
        after = rss_kib()
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # what the agent can do after its first sync
        trimmed = rss_kib()
        ips = list(cache.all_ips())
        started = time.perf_counter()
        for ip in ips * max(1, 200_000 // max(1, len(ips))):
            cache.lookup(ip)
        lookups = max(1, 200_000 // max(1, len(ips))) * len(ips)
        lookup_ns = (time.perf_counter() - started) / lookups * 1e9
        cached = len(cache)
        cache.stop()
        client.close()
    finally:
        child.stdin.close()
        child.wait(30)
    return {
        "pods": pods,
        "pods_in_cache": cached,
        "list_json_mib": round(info["pod_json_bytes"] / 2**20, 1),
        "rss_before_mib": round(before / 1024, 1),
        "rss_synced_mib": round(after / 1024, 1),
        "rss_after_malloc_trim_mib": round(trimmed / 1024, 1),
        "peak_rss_mib": round(rss_kib("VmHWM") / 1024, 1),
        "cache_bytes_per_pod": round((trimmed - before) * 1024 / max(1, pods)),
        "sync_seconds": round(synced_s, 2),
        "lookup_ns": round(lookup_ns),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.pods)
        return
    result = measure(args.pods)
    for key, value in result.items():
        print(f"{key:28} {value}")
    write_report("enrichment_memory", result)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "lab"))  # the test lab (not installed)
    main()
