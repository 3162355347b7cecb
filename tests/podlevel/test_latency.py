"""API-server latency, timed in the kernel, against a stand-in server 20 ms away."""

from __future__ import annotations

import socket

import pytest

from retina_lab.agent import AgentProcess
from retina_lab.delay import PacketDelay
from retina_lab.traffic import TcpServer

HANDSHAKE = "networkobservability_adv_node_apiserver_tcp_handshake_latency"
LATENCY = "networkobservability_adv_node_apiserver_latency"
NO_RESPONSE = "networkobservability_adv_node_apiserver_no_response"


def histogram_median(metrics, name: str) -> float | None:
    buckets = sorted((float(lab["le"]), v) for n, lab, v in metrics.samples if n == f"{name}_bucket")
    total = buckets[-1][1] if buckets else 0
    for le, count in buckets:
        if total and count >= total / 2:
            return le
    return None


@pytest.mark.parametrize("delay_ms", [20])
def test_handshake_median_near_the_delay(lab_node, delay_ms):
    b = lab_node["b"]
    port = 6443
    # a plain TCP stand-in: answers a line with a line, stays silent on a "silent" request
    server = TcpServer(b, port, reply=lambda data: None if b"silent" in data else b"ok\n")
    config = {"enabledPlugin": ["latency"], "plugins": {"latency": {"apiServer": [f"{b.ip}:{port}"]}}}
    try:
        with (
            AgentProcess(config) as agent,
            PacketDelay(
                b, ["-p", "tcp", "--sport", str(port), "--tcp-flags", "SYN,ACK", "SYN,ACK"], delay_ms / 1000
            ) as delay,
        ):
            connections = 15
            for _ in range(connections):  # the node itself talks to the "API server"
                with socket.create_connection((b.ip, port), timeout=5) as c:
                    c.sendall(b"GET /version\n")
                    assert c.recv(16) == b"ok\n"
            with socket.create_connection((b.ip, port), timeout=5) as silent:
                silent.sendall(b"silent watch\n")  # never answered
                m = agent.scrape_until(
                    lambda m: m.value(f"{HANDSHAKE}_count") >= connections + 1 and m.value(NO_RESPONSE) >= 1,
                    timeout=20,
                )
            assert delay.delayed >= connections
            assert m.value(f"{HANDSHAKE}_count") >= connections + 1
            median = histogram_median(m, HANDSHAKE)
            assert median is not None and delay_ms - 2 <= median <= delay_ms + 5, median
            assert m.value(f"{LATENCY}_count") >= connections  # request -> response timed
            assert m.value(NO_RESPONSE, no_response="no_response") == 1
    finally:
        server.close()
