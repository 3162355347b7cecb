"""Which pods produce series: annotation mode, and the series cap against a flood."""

from __future__ import annotations

import socket

from retina_lab.cluster import apply_crds, metrics_configuration
from retina_lab.traffic import send_udp, udp_sink
from tests.kube_fixtures import agent_kubeconfig_for
from tests.podlevel.test_lifecycle import client_for
from tests.podlevel.test_packetparser import pod_level_agent, seeded, wait_veths  # noqa: F401

FWD = "networkobservability_adv_forward_count"


def test_annotation_mode_counts_only_observed_namespaces(seeded):  # noqa: F811
    import kubernetes

    kube, node = seeded
    a, b = node["a"], node["b"]
    core = kubernetes.client.CoreV1Api(client_for(kube))
    core.patch_namespace("data", {"metadata": {"annotations": {"retina.sh": "observe"}}})
    sink = udp_sink(b, 7130)
    try:
        with pod_level_agent(kube, remote=False, extra={"enableAnnotations": True}) as agent:
            wait_veths(agent, node)
            send_udp(a, b.ip, 7130, 25)
            m = agent.scrape_until(lambda m: m.value(FWD, podname="db-0") >= 25)
            assert m.value(FWD, podname="db-0", direction="ingress") >= 25
            # pod a (namespace shop, not annotated) has no series of its own
            assert not [s for s in m.series(FWD) if s["podname"] == "web-5d9c-x7k2p"]
    finally:
        sink.close()


def test_series_cap_refuses_new_series_and_counts_them(seeded):  # noqa: F811
    kube, node = seeded
    apply_crds(kube)
    kube.seed(
        [
            metrics_configuration(
                "ports",
                exclude=[],
                options=[
                    {
                        "metricName": "forward_count",
                        "sourceLabels": ["podname"],
                        "destinationLabels": ["podname", "port"],
                        "additionalLabels": ["direction"],
                    }
                ],
            )
        ]
    )
    a, b = node["a"], node["b"]
    with pod_level_agent(
        kube,
        remote=True,
        extra={
            "podLevel": {
                "kubeconfig": str(agent_kubeconfig_for(kube)),
                "nodeName": "lab-node",
                "maxSeries": 100,
            }
        },
    ) as agent:
        wait_veths(agent, node)
        with a.entered(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for port in range(20000, 20200):  # 200 ports x 2 directions: a flood of series
                s.sendto(b"x", (b.ip, port))
        overflow = "controlplane_networkobservability_series_overflow_total"
        m = agent.scrape_until(lambda m: m.value(overflow) > 0)
        assert m.value("controlplane_networkobservability_series") == 100
        assert m.value("controlplane_networkobservability_series_cap_reached") == 1
        assert m.value(overflow, metric="adv_forward_count") > 0
        assert len(m.series(FWD)) <= 100
