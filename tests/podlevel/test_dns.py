"""adv_dns_*: DNS from pod a to a dnsmasq in pod b, with query, type, code and answers."""

from __future__ import annotations

import subprocess

import dns.message
import dns.query

from retina_lab.agent import wait_for
from tests.podlevel.test_packetparser import pod_level_agent, seeded, wait_veths  # noqa: F401


def test_pod_dns_requests_and_responses(seeded):  # noqa: F811
    kube, node = seeded
    a, b = node["a"], node["b"]
    dnsmasq = b.popen(
        [
            "dnsmasq",
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            f"--listen-address={b.ip}",
            "--address=/api.shop.svc.cluster.local/10.96.7.7",
            "--address=/gone.cluster.local/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with pod_level_agent(kube, remote=False) as agent:
            wait_veths(agent, node)
            with a.entered():
                wait_for(
                    lambda: (
                        dns.query.udp(
                            dns.message.make_query("api.shop.svc.cluster.local", "A"), b.ip, timeout=0.5
                        ).answer
                    ),
                    10,
                )
                for _ in range(4):
                    dns.query.udp(dns.message.make_query("api.shop.svc.cluster.local", "A"), b.ip, timeout=2)
                dns.query.udp(dns.message.make_query("x.gone.cluster.local", "A"), b.ip, timeout=2)
            web = {"podname": "web-5d9c-x7k2p", "workload_name": "web", "namespace": "shop"}
            req = "networkobservability_adv_dns_request_count"
            resp = "networkobservability_adv_dns_response_count"
            query = "api.shop.svc.cluster.local."
            m = agent.scrape_until(
                lambda m: (
                    m.value(req, query=query, query_type="A", direction="egress", **web) >= 5
                    and m.value(resp, query=query, direction="ingress", **web) >= 5
                )
            )
            assert m.value(req, query=query, query_type="A", direction="egress", **web) >= 5, m.series(req)
            assert (
                m.value(
                    resp,
                    query=query,
                    query_type="A",
                    return_code="NOERROR",
                    response="10.96.7.7",
                    num_response="1",
                    direction="ingress",
                    **web,
                )
                >= 5
            ), m.series(resp)
            assert (
                m.value(
                    resp,
                    query="x.gone.cluster.local.",
                    return_code="NXDOMAIN",
                    num_response="0",
                    response="",
                    **web,
                )
                == 1
            )
            lost = m.value("controlplane_networkobservability_lost_events_counter", type="dns")
            assert lost == 0
    finally:
        dnsmasq.terminate()
        dnsmasq.wait(5)
