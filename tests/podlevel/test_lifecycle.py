"""Pod-level metrics as pods, MetricsConfigurations and the API server come and go."""

from __future__ import annotations

import kubernetes

from retina_lab.agent import our_tc_filters, wait_for
from retina_lab.cluster import apply_crds, metrics_configuration, owner, pod
from retina_lab.traffic import send_udp, udp_sink
from tests.podlevel.test_packetparser import pod_level_agent, seeded, wait_veths  # noqa: F401

FWD = "networkobservability_adv_forward_count"
MC = ("retina.sh", "v1alpha1", "metricsconfigurations")


def client_for(kube) -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=str(kube.kubeconfig_path))


def replace_mc_spec(api, name: str, spec: dict) -> None:
    custom = kubernetes.client.CustomObjectsApi(api)
    body = custom.get_cluster_custom_object(*MC, name)
    body["spec"] = spec
    custom.replace_cluster_custom_object(*MC, name, body)


def mc_status(api, name: str) -> dict:
    return kubernetes.client.CustomObjectsApi(api).get_cluster_custom_object(
        *MC, name).get("status", {})


def test_new_pod_is_attached_and_counted_deleted_pod_detached_and_expires(seeded):  # noqa: F811
    kube, node = seeded
    apply_crds(kube)
    kube.seed([metrics_configuration("ttl", exclude=[], options=[
        {"metricName": "forward_count", "sourceLabels": ["podname"],
         "destinationLabels": ["podname"], "additionalLabels": ["direction"], "ttl": "3s"}])])
    with pod_level_agent(kube, remote=True) as agent:
        wait_veths(agent, node)
        c = node.add_pod("c")  # a pod appears while the agent runs
        kube.seed([pod("cache-0", "data", c.ip, [owner("StatefulSet", "cache", "sts-cache")])])
        pid = agent.proc.pid
        wait_for(lambda: any(f.startswith(f"{c.host_veth}/ingress/retina_pp")
                             for f in our_tc_filters(pid)), 10, message="attach to the new veth")
        sink = udp_sink(node["b"], 7120)
        flow = {"source_podname": "cache-0", "destination_podname": "db-0",
                "direction": "egress"}

        def counted(m) -> bool:
            return m.value(FWD, **flow) >= 20

        try:
            m = None
            for _ in range(10):  # the cache learns the pod by watch: send until it is known
                send_udp(c, node["b"].ip, 7120, 20)
                m = agent.scrape_until(counted, timeout=2)
                if counted(m):
                    break
            assert counted(m), m.series(FWD)
        finally:
            sink.close()
        veth = c.host_veth
        node.remove_pod("c")  # the veth goes: the kernel drops its filters, we forget it
        kubernetes.client.CoreV1Api(client_for(kube)).delete_namespaced_pod("cache-0", "data")
        assert not any(f.startswith(f"{veth}/") for f in our_tc_filters(pid))
        # no more traffic: the series is gone after its ttl (3s) and a harvest
        agent.wait_metric(lambda m: m.value(FWD, **flow) == 0 and not any(
            s.get("source_podname") == "cache-0" for s in m.series(FWD)), timeout=20,
            message="the cache-0 series to expire")
        assert agent.scrape().value("controlplane_networkobservability_expired_metrics_counter",
                                    metric="adv_forward_count") >= 1


def test_metrics_configuration_scopes_namespaces_and_bad_one_changes_nothing(seeded):  # noqa: F811
    kube, node = seeded
    apply_crds(kube)
    a, b = node["a"], node["b"]
    sink = udp_sink(b, 7121)
    kube.seed([metrics_configuration("all", exclude=[])])
    api = client_for(kube)
    try:
        with pod_level_agent(kube, remote=True) as agent:
            wait_veths(agent, node)
            send_udp(a, b.ip, 7121, 20)
            agent.wait_metric(lambda m: m.value(FWD, source_namespace="shop") >= 20,
                              message="series for both namespaces")
            # Only namespace "data": flows of "shop" pods to "data" still count (the
            # destination is selected); traffic within "shop" only would not.
            replace_mc_spec(api, "all", metrics_configuration("all", include=["data"])["spec"])
            wait_for(lambda: mc_status(api, "all").get("state") == "Accepted", 10)
            agent.wait_metric(lambda m: not m.series(FWD), timeout=15,
                              message="series restart with the new configuration")
            # now exclude every namespace of ours: nothing may produce series
            replace_mc_spec(api, "all",
                            metrics_configuration("all", exclude=["shop", "data"])["spec"])
            agent.wait_metric(lambda m: not m.series(FWD), timeout=15)
            send_udp(a, b.ip, 7121, 20)
            m = agent.scrape_until(lambda m: bool(m.series(FWD)), timeout=4)
            assert m.series(FWD) == [], "excluded namespaces produce no series"
            # an invalid spec: Errored with a reason, and the exclusion stays in force
            bad = metrics_configuration("all", include=["shop"], exclude=["data"])["spec"]
            replace_mc_spec(api, "all", bad)
            wait_for(lambda: mc_status(api, "all").get("state") == "Errored", 10,
                     message="Errored status")
            assert "spec.namespaces" in mc_status(api, "all")["reason"]
            send_udp(a, b.ip, 7121, 20)
            m = agent.scrape_until(lambda m: bool(m.series(FWD)), timeout=4)
            assert m.series(FWD) == [], "the previous (valid) configuration stays in force"
    finally:
        sink.close()


def test_emulator_restart_agent_reconnects_and_keeps_enriching(seeded):  # noqa: F811
    kube, node = seeded
    a, b = node["a"], node["b"]
    sink = udp_sink(b, 7122)
    try:
        with pod_level_agent(kube, remote=False) as agent:
            wait_veths(agent, node)
            kube.stop()
            send_udp(a, b.ip, 7122, 10)  # enrichment answers from the cache meanwhile
            agent.wait_metric(lambda m: m.value(FWD, podname="db-0") >= 10,
                              message="labels while the API server is down")
            kube.start()
            # a pod replaced after the restart shows the watch resumed
            core = kubernetes.client.CoreV1Api(client_for(kube))
            core.delete_namespaced_pod("db-0", "data")
            # created with its status (podIP) as the scheduler and kubelet would leave it
            kube.seed([pod("db-0", "data", b.ip, [owner("StatefulSet", "db2", "sts-db2")])])
            send_udp(a, b.ip, 7122, 10)
            agent.wait_metric(lambda m: m.value(FWD, podname="db-0", workload_name="db2") > 0,
                              timeout=30, message="enrichment after the restart")
            assert agent.scrape().value(
                "controlplane_networkobservability_kubernetes_connected") == 1
    finally:
        sink.close()
