"""Pod-level metrics as pods, MetricsConfigurations and the API server come and go."""

from __future__ import annotations

import kubernetes

from retina_lab.agent import our_tc_filters, wait_for
from retina_lab.cluster import apply_crds, metrics_configuration, owner, pod
from retina_lab.traffic import send_udp, udp_sink
from tests.helpers.metrics import wait_exact
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
    return kubernetes.client.CustomObjectsApi(api).get_cluster_custom_object(*MC, name).get("status", {})


def test_new_pod_is_attached_and_counted_deleted_pod_detached_and_expires(seeded):  # noqa: F811
    kube, node = seeded
    apply_crds(kube)
    kube.seed(
        [
            metrics_configuration(
                "ttl",
                exclude=[],
                options=[
                    {
                        "metricName": "forward_count",
                        "sourceLabels": ["podname"],
                        "destinationLabels": ["podname"],
                        "additionalLabels": ["direction"],
                        # longer than the exact count's window (2.5 s after the count was
                        # seen, up to a harvest after it was counted): with 3s the series
                        # could expire inside the window and read 0 (CI did)
                        "ttl": "8s",
                    }
                ],
            )
        ]
    )
    with pod_level_agent(kube, remote=True) as agent:
        wait_veths(agent, node)
        c = node.add_pod("c")  # a pod appears while the agent runs
        kube.seed([pod("cache-0", "data", c.ip, [owner("StatefulSet", "cache", "sts-cache")])])
        pid = agent.proc.pid
        wait_for(
            lambda: any(f.startswith(f"{c.host_veth}/ingress/retina_pp") for f in our_tc_filters(pid)),
            10,
            message="attach to the new veth",
        )
        sink = udp_sink(node["b"], 7120)
        flow = {"source_podname": "cache-0", "destination_podname": "db-0", "direction": "egress"}

        def counted(m) -> bool:
            return m.value(FWD, **flow) >= 20

        try:
            m, batches = None, 0
            for _ in range(10):  # the cache learns the pod by watch: send until it is known
                send_udp(c, node["b"].ip, 7120, 20)
                batches += 1
                m = agent.scrape_until(counted, timeout=2)
                if counted(m):
                    break
            assert counted(m), m.series(FWD)
            # Every packet counts once: as cache-0's, or (before the watch brought the pod) as
            # an unknown source's; db-0 is selected either way.
            wait_exact(
                agent,
                lambda m: {"to db-0": m.value(FWD, destination_podname="db-0", direction="egress")},
                {"to db-0": 20 * batches},
            )
        finally:
            sink.close()
        veth = c.host_veth
        node.remove_pod("c")  # the veth goes: the kernel drops its filters, the agent forgets it
        kubernetes.client.CoreV1Api(client_for(kube)).delete_namespaced_pod("cache-0", "data")
        # The gone veth's filters cannot be listed any more; what a user sees is that a pod
        # recreated with the same veth name (a new ifindex) is attached again.
        again = node.add_pod("c")
        assert again.host_veth == veth
        wait_for(
            lambda: any(f.startswith(f"{veth}/ingress/retina_pp") for f in our_tc_filters(pid)),
            10,
            message="attach to the recreated veth",
        )
        node.remove_pod("c")
        # no more traffic: the series is gone after its ttl (8s) and a harvest
        agent.wait_metric(
            lambda m: (
                m.value(FWD, **flow) == 0
                and not any(s.get("source_podname") == "cache-0" for s in m.series(FWD))
            ),
            timeout=30,
            message="the cache-0 series to expire",
        )
        assert (
            agent.scrape().value(
                "controlplane_networkobservability_expired_metrics_counter", metric="adv_forward_count"
            )
            >= 1
        )


def test_first_packets_count_under_the_metrics_configuration_read_before_attaching(seeded):  # noqa: F811
    """A slow API server at start-up (the MetricsConfigurations list held): the agent waits for
    it before attaching and says so in /readyz. Counted before it, packets would carry the
    default labels, and its arrival would restart every series, losing what was counted."""
    kube, node = seeded
    apply_crds(kube)
    option = {"metricName": "forward_count", "sourceLabels": ["podname"], "destinationLabels": ["podname"]}
    kube.seed([metrics_configuration("labels", exclude=[], options=[option])])
    a, b = node["a"], node["b"]
    sink = udp_sink(b, 7123)
    agent = pod_level_agent(kube, remote=True)
    try:
        with kube.held(f"/apis/{MC[0]}/{MC[1]}/{MC[2]}") as held:
            agent.start(wait_ready=False)
            held.wait_requests(1)  # the agent asked for them; the answer is held
            status = agent.readyz()
            assert status["ready"] is False, status
            reasons = {p["reason"] for p in status["plugins"].values()}
            assert len(reasons) == 1 and "MetricsConfigurations" in reasons.pop(), status
            assert our_tc_filters(agent.proc.pid) == [], "attached before the configuration was read"
        agent.wait_ready()
        wait_veths(agent, node)
        send_udp(a, b.ip, 7123, 20)
        # counted at a's veth and at b's; this configuration has no direction label
        web_to_db = {"source_podname": "web-5d9c-x7k2p", "destination_podname": "db-0"}
        m = wait_exact(agent, lambda m: {"web to db-0": m.value(FWD, **web_to_db)}, {"web to db-0": 40})
        assert m.series(FWD) and all(set(s) == set(web_to_db) for s in m.series(FWD)), m.series(FWD)
    finally:
        sink.close()
        agent.cleanup()


def test_metrics_configuration_scopes_namespaces_and_bad_one_changes_nothing(seeded):  # noqa: F811
    """Pods a (shop), b (data), c (other). After each change, 20 packets a->b and 20 a->c, and the
    exact series they count in. Remote context: a flow counts when either side is selected, once
    at the source's veth (egress) and once at the destination's (ingress)."""
    kube, node = seeded
    apply_crds(kube)
    a, b = node["a"], node["b"]
    c = node.add_pod("c")
    kube.seed(
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}},
            pod("cache-0", "other", c.ip, [owner("StatefulSet", "cache", "sts-cache")]),
        ]
    )
    sinks = [udp_sink(b, 7121), udp_sink(c, 7121)]
    kube.seed([metrics_configuration("all", exclude=[])])
    api = client_for(kube)

    def flows(m) -> dict[str, float]:
        """Counts of our two flows by (destination pod, direction), only the non-zero ones."""
        out = {}
        for s in m.series(FWD):
            if s.get("source_podname") != "web-5d9c-x7k2p":
                continue
            key = f"{s.get('destination_podname')}/{s.get('direction')}"
            out[key] = out.get(key, 0) + m.value(FWD, **s)
        return {k: v for k, v in out.items() if v}

    def send_both() -> None:
        send_udp(a, b.ip, 7121, 20)
        send_udp(a, c.ip, 7121, 20)

    def change(spec: dict, state: str = "Accepted") -> None:
        """Replace the spec and wait until the agent has acted on it: its status names the new
        spec as the one in force (written after the agent switched), or Errored for a bad one."""
        replace_mc_spec(api, "all", spec)
        if state == "Accepted":
            wait_for(
                lambda: (
                    mc_status(api, "all").get("lastKnownSpec") == spec
                    and mc_status(api, "all").get("state") == "Accepted"
                ),
                10,
                message="the agent to accept the new MetricsConfiguration",
            )
        else:
            wait_for(lambda: mc_status(api, "all").get("state") == state, 10, message=f"{state} status")

    both = {"db-0/egress": 20, "db-0/ingress": 20, "cache-0/egress": 20, "cache-0/ingress": 20}
    try:
        with pod_level_agent(kube, remote=True) as agent:
            wait_veths(agent, node)
            # 1. exclude nothing: both flows count
            send_both()
            wait_exact(agent, flows, both)
            # 2. include only "data": a->b counts (b selected), a->c (shop->other) does not
            change(metrics_configuration("all", include=["data"])["spec"])
            assert flows(agent.scrape()) == {}, "series restart with the new configuration"
            send_both()
            wait_exact(agent, flows, {"db-0/egress": 20, "db-0/ingress": 20})
            # 3. exclude "shop" and "data": a->b no longer counts, a->c does (c in "other")
            change(metrics_configuration("all", exclude=["shop", "data"])["spec"])
            send_both()
            wait_exact(agent, flows, {"cache-0/egress": 20, "cache-0/ingress": 20})
            # 4. an invalid spec: Errored with a reason, and the exclusion stays in force whole
            bad = metrics_configuration("all", include=["shop"], exclude=["data"])["spec"]
            change(bad, "Errored")
            assert "spec.namespaces" in mc_status(api, "all")["reason"]
            send_both()
            wait_exact(agent, flows, {"cache-0/egress": 40, "cache-0/ingress": 40})
    finally:
        for s in sinks:
            s.close()


def test_emulator_restart_agent_reconnects_and_keeps_enriching(seeded):  # noqa: F811
    kube, node = seeded
    a, b = node["a"], node["b"]
    sink = udp_sink(b, 7122)
    try:
        with pod_level_agent(kube, remote=False) as agent:
            wait_veths(agent, node)
            kube.stop()
            send_udp(a, b.ip, 7122, 10)  # enrichment answers from the cache meanwhile
            agent.wait_metric(
                lambda m: m.value(FWD, podname="db-0") >= 10, message="labels while the API server is down"
            )
            kube.start()
            # a pod replaced after the restart shows the watch resumed
            core = kubernetes.client.CoreV1Api(client_for(kube))
            core.delete_namespaced_pod("db-0", "data")
            # created with its status (podIP) as the scheduler and kubelet would leave it
            kube.seed([pod("db-0", "data", b.ip, [owner("StatefulSet", "db2", "sts-db2")])])
            send_udp(a, b.ip, 7122, 10)
            agent.wait_metric(
                lambda m: m.value(FWD, podname="db-0", workload_name="db2") > 0,
                timeout=30,
                message="enrichment after the restart",
            )
            assert agent.scrape().value("controlplane_networkobservability_kubernetes_connected") == 1
    finally:
        sink.close()
