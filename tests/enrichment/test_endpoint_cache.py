"""The endpoint cache against the Kubernetes API emulator, over real HTTP, with the real client."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest

from retina_agent.enrichment import UNKNOWN_ENDPOINT, Endpoint, EndpointCache
from retina_lab.kube import KubeEmulator
from retina_lab.proxy import CuttableProxy
from tests.enrichment.cluster import namespace, node, pod, service, start_pod, wait_for, workload
from tests.kube_fixtures import AGENT_NAMESPACE


def seed_workloads(kube: KubeEmulator) -> None:
    """Namespace ``shop`` with a Deployment, a StatefulSet, a DaemonSet, a CronJob and loose pods
    on node-1 (zone-a) and node-2 (zone-b)."""
    kube.seed([node("node-1", "zone-a"), node("node-2", "zone-b"), namespace("shop")])
    deploy = workload("apps/v1", "Deployment", "web", "shop")
    rs = workload("apps/v1", "ReplicaSet", "web-5d8f7c", "shop", owner=deploy)
    sts = workload("apps/v1", "StatefulSet", "db", "shop")
    ds = workload("apps/v1", "DaemonSet", "agent", "shop")
    cron = workload("batch/v1", "CronJob", "backup", "shop")
    job = workload("batch/v1", "Job", "backup-28000000", "shop", owner=cron)
    lone_rs = workload("apps/v1", "ReplicaSet", "solo", "shop")
    kube.seed([deploy, rs, sts, ds, cron, job, lone_rs])
    web = {"app": "web", "pod-template-hash": "5d8f7c"}
    kube.seed(
        [
            pod("web-5d8f7c-aaaaa", "shop", "node-1", ("10.244.1.10", "fd00::1:10"), rs, web),
            pod("web-5d8f7c-bbbbb", "shop", "node-2", ("10.244.2.10",), rs, web),
            pod("db-0", "shop", "node-1", ("10.244.1.11",), sts, {"app": "db"}),
            pod("agent-x1", "shop", "node-1", ("10.244.1.12",), ds),
            pod("backup-28000000-zz", "shop", "node-2", ("10.244.2.13",), job),
            pod("solo-qqqqq", "shop", "node-1", ("10.244.1.14",), lone_rs),
            pod("bare", "shop", "node-1", ("10.244.1.15",)),
            pod("hostnet", "shop", "node-1", ("192.168.0.1",), host_network=True),
            pod("done", "shop", "node-1", ("10.244.1.16",), phase="Succeeded"),
            service("web", "shop", {"app": "web"}, "10.96.0.10"),
        ]
    )


@pytest.fixture
def remote_cache(
    kube_emulator: KubeEmulator, agent_api_client: kubernetes.client.ApiClient
) -> Iterator[EndpointCache]:
    """The agent's cache with the agent's identity (retina-agent token, rendered RBAC)."""
    seed_workloads(kube_emulator)
    cache = EndpointCache(agent_api_client, "node-1", remote_context=True)
    cache.start()
    try:
        assert cache.wait_synced(10), "the cache did not sync with the emulator"
        yield cache
    finally:
        cache.stop()


def test_workloads_follow_owner_references(remote_cache: EndpointCache) -> None:
    web = remote_cache.lookup("10.244.1.10")
    assert web == Endpoint(
        "10.244.1.10", "shop", "web-5d8f7c-aaaaa", "Deployment", "web", "node-1", "web", "zone-a"
    )
    assert remote_cache.lookup("fd00::1:10") == Endpoint(
        "fd00::1:10",
        *[
            getattr(web, f)
            for f in ("namespace", "podname", "workload_kind", "workload_name", "node", "service", "zone")
        ],
    )
    assert remote_cache.lookup("fd00:0:0:0:0:0:1:10").podname == "web-5d8f7c-aaaaa"  # any spelling
    assert remote_cache.lookup("10.244.2.10").zone == "zone-b"

    def workload_of(ip: str) -> tuple[str, str]:
        found = remote_cache.lookup(ip)
        assert found is not None, ip
        return found.workload_kind, found.workload_name

    assert workload_of("10.244.1.11") == ("StatefulSet", "db")
    assert workload_of("10.244.1.12") == ("DaemonSet", "agent")
    assert workload_of("10.244.2.13") == ("CronJob", "backup")
    assert workload_of("10.244.1.14") == ("ReplicaSet", "solo")
    assert workload_of("10.244.1.15") == ("unknown", "unknown")  # a bare pod has no workload
    assert remote_cache.lookup("10.244.1.11").service == "unknown"

    # a Service's cluster IP resolves to the Service
    svc = remote_cache.lookup("10.96.0.10")
    assert (svc.namespace, svc.service, svc.podname) == ("shop", "web", "unknown")

    # not pods of their own IPs, or not known at all
    for ip in ("192.168.0.1", "10.244.1.16", "10.1.2.3", "not-an-ip"):
        assert remote_cache.lookup(ip) is None
    assert UNKNOWN_ENDPOINT.workload_kind == "unknown" and UNKNOWN_ENDPOINT.ip == ""
    assert remote_cache.namespace_of("10.244.2.13") == "shop"
    assert remote_cache.namespace_of("10.9.9.9") is None


def test_workload_is_renamed_when_its_replicaset_appears(
    kube_emulator: KubeEmulator, kube_api_client: kubernetes.client.ApiClient, remote_cache: EndpointCache
) -> None:
    """A pod seen before its ReplicaSet: named from pod-template-hash, then from the real owner."""
    core = kubernetes.client.CoreV1Api(kube_api_client)
    owner = workload("apps/v1", "ReplicaSet", "api-77c9", "shop")
    owner["metadata"]["uid"] = "11111111-2222-3333-4444-555555555555"
    start_pod(
        kube_emulator,
        core,
        pod("api-77c9-x", "shop", "node-1", ("10.244.1.30",), owner, {"pod-template-hash": "77c9"}),
    )
    found = wait_for(lambda: remote_cache.lookup("10.244.1.30"), what="pod api-77c9-x")
    assert (found.workload_kind, found.workload_name) == ("Deployment", "api")
    rollout = workload("apps/v1", "Deployment", "api-v2", "shop")
    adopted = workload("apps/v1", "ReplicaSet", "api-77c9", "shop", owner=rollout)
    kube_emulator.seed([rollout, adopted])
    wait_for(
        lambda: remote_cache.lookup("10.244.1.30").workload_name == "api-v2",
        what="the workload from the ReplicaSet's owner",
    )


def test_local_context_sees_only_this_node(
    kube_emulator: KubeEmulator, agent_api_client: kubernetes.client.ApiClient, remote_cache: EndpointCache
) -> None:
    local = EndpointCache(agent_api_client, "node-2", remote_context=False)
    local.start()
    try:
        assert local.wait_synced(10)
        assert local.local_ips() == {"10.244.2.10", "10.244.2.13"}
        assert local.all_ips() == local.local_ips()
        assert local.lookup("10.244.2.10").workload_name == "web"
        assert local.lookup("10.244.2.10").zone == "zone-b"
        assert local.lookup("10.244.1.10") is None  # a pod on node-1
    finally:
        local.stop()
    # remote context sees every pod, and still knows which ones are local
    assert remote_cache.all_ips() == {
        "10.244.1.10",
        "fd00::1:10",
        "10.244.2.10",
        "10.244.1.11",
        "10.244.1.12",
        "10.244.2.13",
        "10.244.1.14",
        "10.244.1.15",
    }
    assert remote_cache.local_ips() == remote_cache.all_ips() - {"10.244.2.10", "10.244.2.13"}
    with pytest.raises(ValueError, match="NODE_NAME"):
        EndpointCache(agent_api_client, None, remote_context=False)


def test_pods_come_and_go_while_running(
    kube_emulator: KubeEmulator, kube_api_client: kubernetes.client.ApiClient, remote_cache: EndpointCache
) -> None:
    changed = threading.Event()
    remote_cache.subscribe(changed.set)
    core = kubernetes.client.CoreV1Api(kube_api_client)
    # scheduled first, an IP later: as the kubelet does it
    start_pod(kube_emulator, core, pod("late", "shop", "node-1", ()))
    kube_emulator.set_status(
        "Pod", "shop", "late", {"podIP": "10.244.1.40", "podIPs": [{"ip": "10.244.1.40"}]}
    )
    found = wait_for(lambda: remote_cache.lookup("10.244.1.40"), timeout=2, what="the new pod")
    assert found.podname == "late" and "10.244.1.40" in remote_cache.local_ips()
    assert changed.wait(1)
    changed.clear()
    core.delete_namespaced_pod("late", "shop")
    wait_for(lambda: remote_cache.lookup("10.244.1.40") is None, timeout=2, what="the pod to go")
    assert "10.244.1.40" not in remote_cache.all_ips()
    assert changed.wait(1)


def test_observe_annotation_on_pod_or_namespace(
    kube_emulator: KubeEmulator, kube_api_client: kubernetes.client.ApiClient, remote_cache: EndpointCache
) -> None:
    core = kubernetes.client.CoreV1Api(kube_api_client)
    assert remote_cache.annotated_ips() == frozenset()
    core.create_namespace(namespace("watched", {"retina.sh": "observe"}))
    core.create_namespace(namespace("plain"))
    start_pod(kube_emulator, core, pod("w1", "watched", "node-1", ("10.244.1.50",)))
    start_pod(
        kube_emulator,
        core,
        pod("p1", "plain", "node-1", ("10.244.1.51",), annotations={"retina.sh": "observe"}),
    )
    start_pod(kube_emulator, core, pod("p2", "plain", "node-1", ("10.244.1.52",)))
    wait_for(lambda: remote_cache.annotated_ips() == {"10.244.1.50", "10.244.1.51"}, what="annotated pods")
    # annotating the namespace later selects its other pods too; removing it deselects them
    core.patch_namespace("plain", {"metadata": {"annotations": {"retina.sh": "observe"}}})
    wait_for(lambda: "10.244.1.52" in remote_cache.annotated_ips(), what="namespace annotation")
    core.patch_namespace("plain", {"metadata": {"annotations": {"retina.sh": None}}})
    wait_for(
        lambda: remote_cache.annotated_ips() == {"10.244.1.50", "10.244.1.51"}, what="annotation removed"
    )


def test_emulator_restart_keeps_enriching(
    kube_emulator: KubeEmulator, kube_api_client: kubernetes.client.ApiClient, remote_cache: EndpointCache
) -> None:
    kube_emulator.stop()
    try:
        wait_for(lambda: not remote_cache.connected, what="the cache to notice the API server is gone")
        # stale data beats no data: lookups answer from the cache
        assert remote_cache.lookup("10.244.1.10").workload_name == "web"
    finally:
        kube_emulator.start()
    core = kubernetes.client.CoreV1Api(kube_api_client)
    start_pod(kube_emulator, core, pod("after", "shop", "node-2", ("10.244.2.60",)))
    wait_for(lambda: remote_cache.lookup("10.244.2.60"), what="a pod added after the restart")
    wait_for(lambda: remote_cache.connected, what="connected again")
    assert remote_cache.reconnects >= 1
    assert remote_cache.lookup("10.244.1.10").workload_name == "web"


def test_gone_410_relists_without_losing_anything(
    kube_emulator: KubeEmulator, kube_api_client: kubernetes.client.ApiClient, agent_kubeconfig: Path
) -> None:  # applies the RBAC
    """The cache's connection is cut, the cluster changes and etcd is compacted: on reconnect the
    watch gets 410 Gone and the cache lists again; additions and deletions are both seen."""
    seed_workloads(kube_emulator)
    proxy = CuttableProxy(kube_emulator.port)
    config = kubernetes.client.Configuration()  # the agent's identity, through the proxy
    config.host = f"https://127.0.0.1:{proxy.port}"
    config.ssl_ca_cert = str(kube_emulator.ca_path)
    token = kube_emulator.service_account_token(AGENT_NAMESPACE, "retina-agent")
    config.api_key = {"authorization": f"Bearer {token}"}
    client = kubernetes.client.ApiClient(config)
    cache = EndpointCache(client, "node-1", remote_context=True)
    core = kubernetes.client.CoreV1Api(kube_api_client)  # the test's own, direct connection
    try:
        cache.start()
        assert cache.wait_synced(10)
        proxy.cut()
        wait_for(lambda: not cache.connected, what="the cut to be noticed")
        core.delete_namespaced_pod("db-0", "shop")
        start_pod(kube_emulator, core, pod("newcomer", "shop", "node-1", ("10.244.1.70",)))
        core.patch_namespaced_pod("bare", "shop", {"metadata": {"annotations": {"retina.sh": "observe"}}})
        kube_emulator.compact()
        assert cache.lookup("10.244.1.11").podname == "db-0"  # stale until the API is back
        relists = cache.relists
        proxy.mend()
        wait_for(lambda: cache.relists > relists, what="a relist after 410 Gone")
        wait_for(lambda: cache.lookup("10.244.1.70"), what="the pod created while cut off")
        assert cache.lookup("10.244.1.11") is None
        assert cache.annotated_ips() == {"10.244.1.15"}
        assert cache.lookup("10.244.1.10").workload_name == "web"
        # Each kind's watch retries on its own backoff (up to the reflector's 2s max), so the pods
        # relist can be done before, say, the namespaces watch tries again: connected is polled, not
        # asserted at once (that made this test fail about 1 run in 3). A cache that never
        # reconnected would still fail here.
        wait_for(lambda: cache.connected, timeout=10, what="every watch to reconnect after the cut")
        assert cache.reconnects >= 1
    finally:
        cache.stop()
        client.close()
        proxy.close()
