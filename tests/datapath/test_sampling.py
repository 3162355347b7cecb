"""dataSamplingRate (1-in-N pod-level flow and DNS events, counts scaled) and the
dataPathBudget controller, on real traffic."""

from __future__ import annotations

import math

from retina_lab.agent import AgentProcess, our_tc_filters, wait_for
from retina_lab.cluster import NODE, seed_lab
from retina_lab.traffic import send_udp, udp_sink

FWD = "networkobservability_adv_forward_count"
RATE = "controlplane_networkobservability_data_sampling_rate"


def _stable(agent: AgentProcess, name: str, **labels):
    """The scrape once ``name`` has stopped moving over two harvests (interval 1s)."""
    last: list[float] = []

    def settled():
        m = agent.scrape()
        last.append(m.value(name, **labels))
        return m if len(last) >= 3 and last[-1] == last[-3] and last[-1] > 0 else None

    return wait_for(settled, 30, interval=1.0, message=f"{name} to settle")


def test_sampled_flow_counts_are_scaled_by_the_rate(kube_emulator, lab_node):
    seed_lab(kube_emulator, lab_node)
    a, b = lab_node["a"], lab_node["b"]
    n, sent, port = 4, 3001, 7300  # not a multiple of n: unsampled counting would show
    config = {
        "enablePodLevel": True,
        "dataSamplingRate": n,
        "enabledPlugin": ["packetparser"],
        "podLevel": {"kubeconfig": str(kube_emulator.kubeconfig_path), "nodeName": NODE},
    }
    sink = udp_sink(b, port)
    try:
        with AgentProcess(config) as agent:
            pid = agent.proc.pid
            wait_for(
                lambda: all(
                    any(f.startswith(f"{v}/ingress/retina_pp") for f in our_tc_filters(pid))
                    for v in lab_node.host_veths
                ),
                15,
                message="packetparser on the pod veths",
            )
            assert agent.scrape().value(RATE) == n
            send_udp(a, b.ip, port, sent, 64)
            web = {"podname": "web-5d9c-x7k2p", "direction": "egress"}
            m = _stable(agent, FWD, **web)
            estimate = m.value(FWD, **web)
            # 1 packet in n is kept and counted n times: an unbiased estimate, a multiple of n,
            # within 5 standard deviations of a binomial estimate (sent * (n - 1)) ** 0.5
            assert estimate % n == 0, estimate
            assert abs(estimate - sent) <= 5 * math.sqrt(sent * (n - 1)), estimate
    finally:
        sink.close()


def test_budget_raises_the_sampling_rate_under_load_and_lowers_it_after(lab_node):
    a, b = lab_node["a"], lab_node["b"]
    veths = {"interfaces": lab_node.host_veths}  # only this lab's traffic counts
    config = {
        "dataPathBudget": "0.001%",
        "enabledPlugin": ["packetforward", "dns"],
        "plugins": {"packetforward": veths, "dns": veths},
    }
    sink = udp_sink(b, 7310)
    try:
        with AgentProcess(config) as agent:
            m = agent.scrape()
            assert m.value(RATE) == 1
            assert m.value("controlplane_networkobservability_datapath_budget_ratio") == 1e-5

            def over_budget():
                send_udp(a, b.ip, 7310, 2000, 64)
                m = agent.scrape()
                return m if m.value(RATE) >= 4 else None

            m = wait_for(over_budget, 60, interval=0.5, message="the rate to rise")
            assert m.value("controlplane_networkobservability_datapath_cpu_ratio") > 1e-5
            assert "sampling 1 in 2 pod-level flow and DNS events (was 1 in 1)" in agent.log()
            # quiet again: the rate halves back to the configured 1
            agent.wait_metric(lambda m: m.value(RATE) == 1, timeout=60, message="the rate back at 1")
            assert "(was 1 in 2)" in agent.log()
    finally:
        sink.close()
