"""The agent's basic (node-level) metrics on real traffic between lab pods."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time

import dns.message
import dns.query
import dns.rcode
import pytest

from retina_lab.agent import AgentProcess, our_tc_filters, wait_for
from retina_lab.traffic import (
    LOSSY_LINK_TIMEOUT,
    TcpServer,
    connect_refused,
    random_loss_rule,
    send_udp,
    udp_sink,
)
from tests.helpers.metrics import wait_exact

DROP = "networkobservability_drop_count"
DROP_BYTES = "networkobservability_drop_bytes"


def _no_router_solicitations(node) -> None:
    """The lab's interfaces keep soliciting a router (none answers) at 4, 8, 16 s... after link-up,
    and the bridge floods each to every port: stop them, so what is counted is the test's traffic."""
    for pod in node.pods.values():
        pod.run(["sysctl", "-qw", "net.ipv6.conf.eth0.router_solicitations=0"])
    for dev in (*node.host_veths, node.bridge):
        subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{dev}.router_solicitations=0"], check=True)


def _quiet(agent: AgentProcess, name: str, quiet: float = 2.5, timeout: float = 30):
    """The scrape once ``name`` has not moved for ``quiet`` seconds (over a harvest interval)."""
    last, since = agent.scrape(), time.monotonic()

    def settled():
        nonlocal last, since
        m = agent.scrape()
        if any(m.value(name, direction=d) != last.value(name, direction=d) for d in ("ingress", "egress")):
            last, since = m, time.monotonic()
        return m if time.monotonic() - since >= quiet else None

    return wait_for(settled, timeout, 0.3, f"{name} settled")


def test_udp_between_pods_raises_forward_counters(lab_node):
    """Node-level forward counters have no interface label and count every attached interface,
    so this test runs its own agent attached to this lab's two veths only: then the count is
    exact but for ARP/ND frames of the pods themselves (at most a few; ARP is warmed first)."""
    a, b = lab_node["a"], lab_node["b"]
    _no_router_solicitations(lab_node)
    sink = udp_sink(b, 7001)
    agent = AgentProcess(
        {
            "enabledPlugin": ["packetforward"],
            "plugins": {"packetforward": {"interfaces": lab_node.host_veths}},
        }
    )
    try:
        agent.start()
        wait_for(
            lambda: all(
                any(f.startswith(f"{v}/ingress/retina_") for f in our_tc_filters(agent.proc.pid))
                for v in lab_node.host_veths
            ),
            20,
            message="packetforward on the lab veths",
        )
        send_udp(a, b.ip, 7001, 1)  # ARP resolved before counting starts
        fc, fb = "networkobservability_forward_count", "networkobservability_forward_bytes"
        agent.wait_metric(lambda m: m.value(fc, direction="egress") >= 1, message="warm-up")
        # The agent is ready in well under a second, inside the veths' link-up chatter (IPv6 DAD,
        # MLD, router solicitations, IGMP: ~20 frames each in their first 2 s): count after it.
        before = _quiet(agent, fc)
        n, size = 300, 100
        send_udp(a, b.ip, 7001, n, size)
        frame = size + 8 + 20 + 14  # payload + UDP + IPv4 + Ethernet header

        def delta(m, name, d):
            return m.value(name, direction=d) - before.value(name, direction=d)

        # a's veth sees each packet come in from the pod (ingress), b's veth sends it to the pod
        # (egress): n each way; a double count would be 2n.
        m = agent.scrape_until(lambda m: all(delta(m, fc, d) >= n for d in ("ingress", "egress")))
        m = agent.scrape_until(lambda m: False, timeout=1.5)  # late counts show within a harvest
        slack = 4  # ARP/ND frames the pods' kernels may send meanwhile (not ours to control)
        for d in ("ingress", "egress"):
            assert n <= delta(m, fc, d) <= n + slack, (d, delta(m, fc, d))
            assert n * frame <= delta(m, fb, d) <= n * frame + slack * 90, (d, delta(m, fb, d))
    finally:
        agent.cleanup()
        sink.close()


def test_iptables_drop_counted_exactly_under_netfilter_reason(agent, lab_node):
    a, b = lab_node["a"], lab_node["b"]
    rule = ["INPUT", "-p", "udp", "--dport", "7002", "-j", "DROP"]
    b.run(["iptables", "-A", *rule])
    try:
        before = agent.scrape()
        send_udp(a, b.ip, 7002, 40, 100)
        counters = b.run(["iptables", "-L", "INPUT", "-v", "-n", "-x"]).stdout.splitlines()[2]
        dropped, dropped_bytes = map(int, counters.split()[:2])
        assert dropped == 40

        def delta(m, name):
            return m.value(name, reason="NETFILTER_DROP") - before.value(name, reason="NETFILTER_DROP")

        after = agent.wait_metric(lambda m: delta(m, DROP) >= dropped, message="NETFILTER_DROP drops")
        assert delta(after, DROP) == dropped
        assert delta(after, DROP_BYTES) == dropped_bytes  # sk_buff.len via BTF = IP length
    finally:
        b.run(["iptables", "-D", *rule], check=False)


def _drops(m, direction: str) -> float:
    return m.value(DROP, reason="NETFILTER_DROP", direction=direction)


def test_drop_direction_ingress_for_received_egress_for_generated(agent, lab_node):
    """Retina's "Packets Dropped - Ingress/Egress" panels: the direction comes from the skb.

    Dropped on arrival in pod b (INPUT): received from an interface -> ingress. Dropped as
    pod a sends them (OUTPUT): generated locally -> egress. Exact counts from iptables.
    """
    a, b = lab_node["a"], lab_node["b"]
    in_rule = ["INPUT", "-p", "udp", "--dport", "7006", "-j", "DROP"]
    out_rule = ["OUTPUT", "-p", "udp", "--dport", "7007", "-j", "DROP"]
    b.run(["iptables", "-A", *in_rule])
    a.run(["iptables", "-A", *out_rule])
    try:
        before = agent.scrape()
        send_udp(a, b.ip, 7006, 17, 100)
        with a.entered(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(11):
                with contextlib.suppress(OSError):  # EPERM: netfilter refused the send
                    s.sendto(b"x" * 100, (b.ip, 7007))
        received = int(b.run(["iptables", "-L", "INPUT", "-v", "-n", "-x"]).stdout.splitlines()[2].split()[0])
        generated = int(
            a.run(["iptables", "-L", "OUTPUT", "-v", "-n", "-x"]).stdout.splitlines()[2].split()[0]
        )
        assert (received, generated) == (17, 11)

        def seen(m):
            return (
                _drops(m, "ingress") - _drops(before, "ingress") >= received
                and _drops(m, "egress") - _drops(before, "egress") >= generated
            )

        after = agent.scrape_until(seen)
        assert _drops(after, "ingress") - _drops(before, "ingress") == received
        assert _drops(after, "egress") - _drops(before, "egress") == generated
        assert _drops(after, "unknown") == _drops(before, "unknown") == 0
    finally:
        b.run(["iptables", "-D", *in_rule], check=False)
        a.run(["iptables", "-D", *out_rule], check=False)


def test_tcp_to_closed_port_counted_under_no_socket(agent, lab_node):
    a, b = lab_node["a"], lab_node["b"]
    before = agent.scrape()
    assert connect_refused(a, b.ip, 7003, 5) == 5
    # A lower bound: drops are counted node-wide by a tracepoint, so any other refused
    # connection on the node (other tests, the machine's own traffic) adds NO_SOCKET drops.
    agent.wait_metric(
        lambda m: m.value(DROP, reason="NO_SOCKET") - before.value(DROP, reason="NO_SOCKET") >= 5,
        message="NO_SOCKET drops",
    )


@pytest.fixture
def dnsmasq(watched_lab):
    lab_node = watched_lab
    b = lab_node["b"]
    proc = b.popen(
        [
            "dnsmasq",
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--port=53",
            "--bind-interfaces",
            f"--listen-address={b.ip}",
            f"--listen-address={b.ip6}",
            "--address=/svc.local/10.96.0.10",
            "--address=/nx.local/",
            "--log-facility=-",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def answers():
            with lab_node["a"].entered():
                q = dns.message.make_query("ready.svc.local", "A")
                return dns.query.udp(q, b.ip, timeout=0.5).answer

        wait_for(answers, 10, message="dnsmasq answering")
        yield b
    finally:
        proc.terminate()
        proc.wait(5)


def test_dns_requests_responses_rcodes_latency_udp_tcp_ipv6(lab_node, dnsmasq):
    """Counted exactly by an agent whose DNS plugin watches this lab's veths only (the module's
    agent watches every interface of the node, where other DNS traffic may pass)."""
    a, b = lab_node["a"], dnsmasq
    agent = AgentProcess({"enabledPlugin": ["dns"], "plugins": {"dns": {"interfaces": lab_node.host_veths}}})
    try:
        agent.start()
        wait_for(
            lambda: all(
                any(f.startswith(f"{v}/") for f in our_tc_filters(agent.proc.pid))
                for v in lab_node.host_veths
            ),
            20,
            message="the dns plugin on the lab veths",
        )
        _dns_exactly(agent, a, b)
    finally:
        agent.cleanup()


def _dns_exactly(agent, a, b) -> None:
    before = agent.scrape()
    ok, nx, over_tcp, over_v6 = 12, 5, 3, 4
    with a.entered():
        for i in range(ok):
            r = dns.query.udp(dns.message.make_query(f"web{i}.svc.local", "A"), b.ip, timeout=2)
            assert r.rcode() == dns.rcode.NOERROR
        for i in range(nx):
            r = dns.query.udp(dns.message.make_query(f"gone{i}.nx.local", "A"), b.ip, timeout=2)
            assert r.rcode() == dns.rcode.NXDOMAIN
        for i in range(over_tcp):
            dns.query.tcp(dns.message.make_query(f"tcp{i}.svc.local", "AAAA"), b.ip, timeout=2)
        for i in range(over_v6):
            dns.query.udp(dns.message.make_query(f"v6-{i}.svc.local", "MX"), b.ip6, timeout=2)
    total = ok + nx + over_tcp + over_v6

    def d(m, name, **labels):
        return m.value(name, **labels) - before.value(name, **labels)

    def seen(m):
        return (
            d(m, "networkobservability_dns_request_count") >= total
            and d(m, "networkobservability_dns_response_count") >= total
            and d(m, "networkobservability_dns_latency_seconds_count") >= total
        )

    responses = "networkobservability_dns_responses_total"
    # Exact: each query and each answer once (the plugin watches the node's interfaces; no
    # other DNS crosses them during the test).
    after = wait_exact(
        agent,
        lambda m: {
            "requests": d(m, "networkobservability_dns_request_count"),
            "responses": d(m, "networkobservability_dns_response_count"),
            "NOERROR A": d(m, responses, rcode="NOERROR", qtype="A"),
            "NXDOMAIN A": d(m, responses, rcode="NXDOMAIN", qtype="A"),
            "AAAA (TCP)": d(m, responses, qtype="AAAA"),
            "MX (IPv6)": d(m, responses, qtype="MX"),
            "latencies": d(m, "networkobservability_dns_latency_seconds_count"),
        },
        {
            "requests": total,
            "responses": total,
            "NOERROR A": ok,
            "NXDOMAIN A": nx,
            "AAAA (TCP)": over_tcp,
            "MX (IPv6)": over_v6,
            "latencies": total,
        },
    )
    assert seen(after)
    assert d(after, "networkobservability_dns_latency_seconds_sum") > 0
    # every answer took under a second here: all of them are in the 1.05 s bucket
    assert d(after, "networkobservability_dns_latency_seconds_bucket", le="1.04858") >= total


def test_tcp_state_counts_established_connections(agent, lab_node):
    b = lab_node["b"]
    server = TcpServer(b, 7004)
    clients: list[socket.socket] = []
    try:
        before = agent.scrape()
        k = 8
        for _ in range(k):  # from the node's own namespace, where the agent reads /proc/net
            clients.append(socket.create_connection((b.ip, 7004), timeout=5))
        agent.wait_metric(
            lambda m: (
                m.value("networkobservability_tcp_state", state="ESTABLISHED")
                - before.value("networkobservability_tcp_state", state="ESTABLISHED")
                >= k
            ),
            message=f"{k} more ESTABLISHED",
        )
        for c in clients:
            c.close()
        clients.clear()
    finally:
        for c in clients:
            c.close()
        server.close()


def test_retransmissions_under_random_loss(agent, lab_node):
    """30% of the segments to pod b are dropped (this kernel has no netem: iptables statistic)."""
    a, b = lab_node["a"], lab_node["b"]
    server = TcpServer(b, 7005)
    rule = random_loss_rule(7005)
    b.run(["iptables", "-A", *rule])
    try:
        before = agent.scrape()
        with a.entered(), socket.create_connection((b.ip, 7005), timeout=LOSSY_LINK_TIMEOUT) as c:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(300):
                c.sendall(b"r" * 200)
                time.sleep(0.002)
            wait_for(lambda: server.received >= 300 * 200, 60, message="data through a lossy link")
        retrans_segments = int(a.run(["nstat", "-az", "TcpRetransSegs"]).stdout.split()[-2])
        assert retrans_segments > 0
        name = "networkobservability_tcpretrans_count"
        after = agent.scrape_until(lambda m: m.value(name) > before.value(name))
        events = after.value(name) - before.value(name)
        # One event per retransmitted skb; under loss the unsent writes coalesce into GSO
        # skbs of several segments, so events are between 1 and the segment count.
        assert 0 < events <= retrans_segments
        assert after.value(name, family="ipv4") > before.value(name, family="ipv4")
    finally:
        b.run(["iptables", "-D", *rule], check=False)
        server.close()
