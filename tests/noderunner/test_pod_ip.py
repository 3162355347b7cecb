"""A pod with its own network namespace never shows the node's IP as its podIP: a real kubelet
reports no podIP until the sandbox has one. The node runner once wrote the node's IP (127.0.0.1)
into the first Pending status; the agent's pod watch then took 127.0.0.1 for that pod and gave
the node's loopback drops to it (adv_drop_count{namespace=<the pod's>,ip="127.0.0.1"}, found by
tests/e2e/test_alert_capture.py)."""

from __future__ import annotations

import ipaddress
import os
import threading
from collections.abc import Iterator

import kubernetes
import pytest

from retina_lab.kube import KubeEmulator
from retina_lab.noderunner import NodeRunner

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
NS = "pod-ip"


@pytest.fixture(scope="module")
def cluster(built_images: dict[str, str]) -> Iterator[tuple[KubeEmulator, NodeRunner]]:
    if os.geteuid() != 0:
        pytest.fail("the node runner needs root (rootful podman, network namespaces)")
    with KubeEmulator() as kube, NodeRunner.for_emulator(kube, nodes=["ip-node"]) as runner:
        kube.seed([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}])
        yield kube, runner
    assert not runner.containers()


def test_a_pod_network_pod_reports_only_its_own_ip(cluster, built_images) -> None:
    kube, runner = cluster
    client = kubernetes.config.new_client_from_config(config_file=str(kube.kubeconfig_path))
    core = kubernetes.client.CoreV1Api(client)
    seen: list[tuple[str, str | None]] = []  # (phase, podIP) of every version the API server stored
    started = threading.Event()

    def watch() -> None:
        w = kubernetes.watch.Watch()
        started.set()
        for event in w.stream(core.list_namespaced_pod, NS, timeout_seconds=120):
            pod = event["object"]
            seen.append((pod.status.phase if pod.status else None, pod.status.pod_ip if pod.status else None))
            if pod.status and pod.status.phase == "Running":
                w.stop()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    started.wait(10)
    body = {
        "metadata": {"name": "p"},
        "spec": {
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": built_images["agent"], "command": ["sleep", "600"]}],
        },
    }
    core.create_namespaced_pod(NS, body)
    try:
        thread.join(120)
        assert seen and seen[-1][0] == "Running", seen
        subnet = ipaddress.ip_network(runner.podnet.network)
        ips = {ip for _, ip in seen if ip}
        assert ips and all(ipaddress.ip_address(ip) in subnet for ip in ips), seen
        assert len(ips) == 1, seen  # one IP, from the first status that has one
    finally:
        core.delete_namespaced_pod("p", NS, grace_period_seconds=0)
        runner.wait_for("the pod's container removed", lambda: not runner.containers(), 60)
        client.close()
