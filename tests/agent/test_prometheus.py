"""The agent's output is valid Prometheus text, and a real Prometheus scrapes and queries it."""

from __future__ import annotations

import subprocess

from retina_lab.agent import wait_for
from retina_lab.prometheus import PrometheusServer
from retina_lab.traffic import connect_refused, send_udp
from tests.helpers.tools import require

RETINA_NODE_METRICS = [
    "networkobservability_forward_count",
    "networkobservability_forward_bytes",
    "networkobservability_drop_count",
    "networkobservability_drop_bytes",
    "networkobservability_tcp_state",
    "networkobservability_tcp_connection_remote",
    "networkobservability_tcp_connection_stats",
    "networkobservability_ip_connection_stats",
    "networkobservability_udp_connection_stats",
    "networkobservability_interface_stats",
    "networkobservability_dns_request_count",
    "networkobservability_dns_response_count",
]


def test_promtool_accepts_metrics_output(agent, lab_node):
    # A drop of our own: the agent starts in well under a second now (no compile), too soon to
    # have seen one of the host's.
    connect_refused(lab_node["a"], lab_node["b"].ip, 7022, 2)
    metrics = agent.scrape_until(lambda m: all(m.has(n) for n in RETINA_NODE_METRICS))
    for name in RETINA_NODE_METRICS:  # Retina's exact names, for its dashboards and alerts
        assert metrics.has(name), name
    text = agent.scrape_text()
    result = subprocess.run(
        [require("promtool"), "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_real_prometheus_queries_the_drop_count(agent, lab_node):
    a, b = lab_node["a"], lab_node["b"]
    rule = ["INPUT", "-p", "udp", "--dport", "7010", "-j", "DROP"]
    b.run(["iptables", "-A", *rule])
    with PrometheusServer([f"127.0.0.1:{agent.port}"]) as prom:
        try:
            query = 'sum(networkobservability_drop_count{reason="NETFILTER_DROP"}) or vector(0)'
            wait_for(lambda: prom.query("up"), 30, message="first scrape of the agent")
            base = agent.scrape().value("networkobservability_drop_count", reason="NETFILTER_DROP")
            wait_for(
                lambda: float(prom.query(query)[0]["value"][1]) >= base,
                30,
                message="Prometheus to catch up with the agent",
            )
            send_udp(a, b.ip, 7010, 25)

            def promql() -> float:
                return float(prom.query(query)[0]["value"][1])

            wait_for(lambda: promql() >= base + 25, 30, message=f"PromQL drop count {base + 25}")
            # What Prometheus holds is the agent's one series, not a sum of copies: its value is
            # at most what the agent reports now (a counter; Prometheus lags by a scrape).
            # (Drops are counted node-wide, so other traffic may add to them: no exact total.)
            assert promql() <= agent.scrape().value(
                "networkobservability_drop_count", reason="NETFILTER_DROP"
            )
            series = prom.query(
                'networkobservability_drop_count{reason="NETFILTER_DROP",direction="ingress"}'
            )  # dropped on arrival in pod b
            assert len(series) == 1, series  # one series per node and reason, no duplicates
            assert series[0]["metric"]["instance"] == "lab-node"
        finally:
            b.run(["iptables", "-D", *rule], check=False)
