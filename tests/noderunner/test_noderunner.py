"""The node runner against the API emulator over real HTTP(S), with real podman containers of
the built agent image: controllers, scheduling, the pod spec as declared, status, logs, exec,
in-cluster config, and nothing left behind."""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
from kubernetes.stream import stream

from images.podman import podman
from retina_lab.kube import KubeEmulator
from retina_lab.noderunner import NodeRunner
from retina_lab.noderunner.kubelet import LABEL_RUNNER

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
NS = "runner-test"


@pytest.fixture(scope="module")
def cluster(
    built_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[KubeEmulator, NodeRunner, kubernetes.client.ApiClient]]:
    if os.geteuid() != 0:
        pytest.fail("the node runner needs root (rootful podman, network namespaces)")
    with KubeEmulator() as kube, NodeRunner.for_emulator(kube, nodes=["node-a", "node-b"]) as runner:
        # node-b is tainted: only pods that tolerate it go there
        runner.api.patch(
            "/api/v1/nodes/node-b",
            {
                "spec": {"taints": [{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}]},
                "metadata": {"labels": {"tier": "b"}},
            },
        )
        kube.seed([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}])
        client = kubernetes.config.new_client_from_config(config_file=str(kube.kubeconfig_path))
        yield kube, runner, client
        client.close()
    assert not runner.containers()


def _pods(kube: KubeEmulator, **labels: str) -> list[dict[str, Any]]:
    return [
        p
        for p in kube.objects("Pod", NS)
        if all(p["metadata"].get("labels", {}).get(k) == v for k, v in labels.items())
    ]


def _running_pods(kube: KubeEmulator, app: str, count: int) -> list[dict[str, Any]] | None:
    running = [p for p in _pods(kube, app=app) if (p.get("status") or {}).get("phase") == "Running"]
    return running if len(running) == count else None


def test_a_job_pod_runs_to_its_exit_code_and_termination_message(cluster, built_images) -> None:
    kube, runner, client = cluster
    batch = kubernetes.client.BatchV1Api(client)
    batch.create_namespaced_job(
        NS,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "fails"},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "main",
                                "image": built_images["agent"],
                                "command": ["/bin/sh", "-c"],
                                "args": [
                                    'echo "hello from $(cat /proc/sys/kernel/hostname)"; '
                                    'echo "kept at /var/x" > /dev/termination-log; exit 3'
                                ],
                            }
                        ],
                    }
                },
            },
        },
    )
    job = runner.wait_for(
        "Job fails Failed",
        lambda: next(
            (
                j
                for j in kube.objects("Job", NS)
                if j["metadata"]["name"] == "fails"
                and any(c["type"] == "Failed" for c in (j.get("status") or {}).get("conditions") or [])
            ),
            None,
        ),
    )
    assert job["status"]["failed"] == 1 and job["status"]["active"] == 0
    assert [c["reason"] for c in job["status"]["conditions"] if c["type"] == "Failed"] == [
        "BackoffLimitExceeded"
    ]
    pod = _pods(kube, **{"job-name": "fails"})[0]
    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3 and terminated["message"].strip() == "kept at /var/x"
    # untainted node-a: the only node a pod without tolerations fits
    assert pod["spec"]["nodeName"] == "node-a"
    log = kubernetes.client.CoreV1Api(client).read_namespaced_pod_log(pod["metadata"]["name"], NS)
    assert log.startswith("hello from ")


IN_CLUSTER = """
import sys, time, kubernetes
kubernetes.config.load_incluster_config()
v1 = kubernetes.client.CoreV1Api()
pods = v1.list_namespaced_pod(open('/var/run/secrets/kubernetes.io/serviceaccount/namespace').read())
print("in-cluster ok", len(pods.items), open('/etc/cfg/greeting').read(), flush=True)
time.sleep(3600)
"""


def test_a_deployment_pod_on_the_pod_network_reaches_the_api_in_cluster(cluster, built_images) -> None:
    kube, runner, client = cluster
    core = kubernetes.client.CoreV1Api(client)
    core.create_namespaced_config_map(NS, {"metadata": {"name": "cfg"}, "data": {"greeting": "hi"}})
    core.create_namespaced_secret(
        NS, {"metadata": {"name": "sec"}, "data": {"k": base64.b64encode(b"s3cret").decode()}}
    )
    core.create_namespaced_service_account(NS, {"metadata": {"name": "reader"}})
    rbac = kubernetes.client.RbacAuthorizationV1Api(client)
    rbac.create_namespaced_role(
        NS,
        {
            "metadata": {"name": "reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        NS,
        {
            "metadata": {"name": "reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": NS}],
        },
    )
    labels = {"app": "reader"}
    kubernetes.client.AppsV1Api(client).create_namespaced_deployment(
        NS,
        {
            "metadata": {"name": "reader"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "reader",
                        "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532},
                        "containers": [
                            {
                                "name": "main",
                                "image": built_images["agent"],
                                "command": ["python3", "-c", IN_CLUSTER],
                                "env": [
                                    {
                                        "name": "PASS",
                                        "valueFrom": {"secretKeyRef": {"name": "sec", "key": "k"}},
                                    },
                                    {
                                        "name": "MY_IP",
                                        "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                                    },
                                ],
                                "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1},
                                "securityContext": {
                                    "readOnlyRootFilesystem": True,
                                    "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}],
                            }
                        ],
                        "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}],
                    },
                },
            },
        },
    )
    pod = runner.wait_for(
        "reader pod Ready",
        lambda: next(
            (
                p
                for p in _pods(kube, app="reader")
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in (p.get("status") or {}).get("conditions") or []
                )
            ),
            None,
        ),
    )
    name = pod["metadata"]["name"]
    assert pod["status"]["podIP"].startswith(runner.podnet.gateway.rsplit(".", 1)[0] + ".")
    rs = kube.objects("ReplicaSet", NS)
    assert [r["metadata"]["ownerReferences"][0]["name"] for r in rs] == ["reader"]
    log = runner.wait_for(
        "in-cluster log line",
        lambda: "in-cluster ok" in (text := core.read_namespaced_pod_log(name, NS)) and text,
    )
    assert re.search(r"^in-cluster ok \d+ hi$", log, re.M), log  # listed its namespace, read the ConfigMap
    out = stream(
        core.connect_get_namespaced_pod_exec,
        name,
        NS,
        command=[
            "/bin/sh",
            "-c",
            'echo "$PASS $MY_IP $(id -u) $KUBERNETES_SERVICE_HOST"; touch /x 2>&1 || true',
        ],
        stderr=True,
        stdout=True,
        stdin=False,
        tty=False,
    )
    assert f"s3cret {pod['status']['podIP']} 65532 {runner.podnet.gateway}" in out
    assert "Read-only file system" in out
    kubernetes.client.AppsV1Api(client).delete_namespaced_deployment("reader", NS)
    runner.wait_for(
        "reader containers removed", lambda: not any("_reader-" in c for c in runner.containers())
    )
    assert not _pods(kube, app="reader")


def test_a_daemonset_gets_one_pod_per_fitting_node(cluster, built_images) -> None:
    kube, runner, client = cluster
    apps = kubernetes.client.AppsV1Api(client)
    labels = {"app": "ds"}
    spec = {
        "selector": {"matchLabels": labels},
        "template": {
            "metadata": {"labels": labels},
            "spec": {
                "hostNetwork": True,
                "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                "containers": [
                    {"name": "main", "image": built_images["agent"], "command": ["sleep", "3600"]}
                ],
            },
        },
    }
    apps.create_namespaced_daemon_set(NS, {"metadata": {"name": "ds"}, "spec": spec})
    pods = runner.wait_for(
        "two DaemonSet pods running",
        lambda: _running_pods(kube, "ds", 2),
    )
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["node-a", "node-b"]
    assert all(p["status"]["podIP"] == "127.0.0.1" for p in pods)
    # a selector for node-b only: the DaemonSet leaves node-a
    apps.patch_namespaced_daemon_set(
        "ds", NS, {"spec": {"template": {"spec": {"nodeSelector": {"tier": "b"}}}}}
    )
    runner.wait_for(
        "DaemonSet on node-b only",
        lambda: [p["spec"]["nodeName"] for p in _pods(kube, app="ds")] == ["node-b"],
    )
    ds = runner.wait_for(
        "DaemonSet status",
        lambda: (d := kube.objects("DaemonSet", NS)[0]).get("status", {}).get("numberReady") == 1 and d,
    )
    assert ds["status"]["desiredNumberScheduled"] == 1
    apps.delete_namespaced_daemon_set("ds", NS)
    runner.wait_for("DaemonSet containers removed", lambda: not any("_ds-" in c for c in runner.containers()))


def test_a_spec_the_runner_cannot_honour_fails_the_pod_by_name(cluster, built_images) -> None:
    kube, runner, client = cluster
    core = kubernetes.client.CoreV1Api(client)
    core.create_namespaced_pod(
        NS,
        {
            "metadata": {"name": "nfs"},
            "spec": {
                "containers": [
                    {
                        "name": "main",
                        "image": built_images["agent"],
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    }
                ],
                "volumes": [{"name": "data", "nfs": {"server": "nfs.example", "path": "/x"}}],
            },
        },
    )
    core.create_namespaced_pod(
        NS,
        {
            "metadata": {"name": "nowhere"},
            "spec": {
                "nodeSelector": {"kind": "gpu"},
                "containers": [{"name": "main", "image": built_images["agent"]}],
            },
        },
    )
    pod = runner.wait_for(
        "nfs pod Failed",
        lambda: next(
            (
                p
                for p in _pods(kube)
                if p["metadata"]["name"] == "nfs" and (p.get("status") or {}).get("phase") == "Failed"
            ),
            None,
        ),
    )
    assert pod["status"]["reason"] == "UnsupportedPodSpec" and "nfs" in pod["status"]["message"]
    assert not any("_nfs_" in c for c in runner.containers())
    pending = runner.wait_for(
        "nowhere pod unschedulable",
        lambda: next(
            (
                p
                for p in _pods(kube)
                if p["metadata"]["name"] == "nowhere" and (p.get("status") or {}).get("conditions")
            ),
            None,
        ),
    )
    assert pending["status"]["conditions"][0]["reason"] == "Unschedulable"
    assert "0/2 nodes are available" in pending["status"]["conditions"][0]["message"]
    core.delete_namespaced_pod("nfs", NS)
    core.delete_namespaced_pod("nowhere", NS)


def test_pods_log_of_an_unknown_pod_is_a_kubernetes_status(cluster) -> None:
    _, runner, client = cluster
    core = kubernetes.client.CoreV1Api(client)
    with pytest.raises(kubernetes.client.ApiException) as err:
        core.read_namespaced_pod_log("missing", NS)
    assert err.value.status == 404


def test_containers_are_named_and_labelled_with_the_runner_id(cluster, built_images) -> None:
    """What ``runner.containers()`` and the clean-up find a runner's containers by: the name
    prefix and the label, on a container that runs now (not an empty list)."""
    kube, runner, client = cluster
    core = kubernetes.client.CoreV1Api(client)
    container = {"name": "main", "image": built_images["agent"], "command": ["sleep", "3600"]}
    pod = {"metadata": {"name": "labelled", "labels": {"app": "labelled"}}}
    core.create_namespaced_pod(NS, {**pod, "spec": {"hostNetwork": True, "containers": [container]}})
    try:
        runner.wait_for("labelled pod running", lambda: _running_pods(kube, "labelled", 1))
        listed = json.loads(podman("ps", "-a", "--filter", "name=_labelled_", "--format", "json").stdout)
        [(name, labels)] = [(c["Names"][0], c.get("Labels") or {}) for c in listed]
        assert name.startswith(f"rn{runner.runner_id}_main_labelled_{NS}_"), name
        assert labels.get(LABEL_RUNNER) == runner.runner_id, labels
        assert name in runner.containers()
    finally:
        core.delete_namespaced_pod("labelled", NS)
        runner.wait_for(
            "labelled container removed", lambda: not any("_labelled_" in c for c in runner.containers())
        )
