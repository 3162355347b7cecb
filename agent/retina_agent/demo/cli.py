"""``retina-demo``: the agent on this host against a small built-in demo node, no cluster needed.

Builds a node with three pods (a bridge and one namespace each, like the bridge CNI), starts
the real ``retina-agent``, drives traffic between the pods (UDP, TCP, one port dropped by
iptables, a connection to a closed port, DNS lookups to a dnsmasq in a pod), and prints what
the agent saw: traffic, drops by reason, DNS responses by code, TCP states. Ctrl-C or the end
removes every namespace, link, qdisc and rule it made.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

from retina_agent.demo.agent_process import AgentProcess, Metrics, wait_for
from retina_agent.demo.node import LabNode, LabPod

BAR = "─" * 72


def _udp(pod: LabPod, dst: str, port: int, count: int, size: int = 200) -> None:
    with pod.entered(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(count):
            s.sendto(b"d" * size, (dst, port))


def _closed_port(pod: LabPod, dst: str, port: int) -> None:
    with pod.entered(), socket.socket() as s:
        s.settimeout(1)
        with contextlib.suppress(OSError):
            s.connect((dst, port))


def _dns(pod: LabPod, server: str, names: list[str]) -> None:
    import dns.message
    import dns.query

    with pod.entered():
        for name in names:
            with contextlib.suppress(Exception):
                dns.query.udp(dns.message.make_query(name, "A"), server, timeout=1)


def dnsmasq_argv(listen_ip: str, answer_ip: str, *extra: str) -> list[str]:
    """The demo's DNS server: ``*.svc.cluster.local`` answers ``answer_ip``, ``*.missing.cluster.local``
    is NXDOMAIN, nothing else (no upstream, no /etc/hosts)."""
    return [
        "dnsmasq",
        "--no-daemon",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        f"--listen-address={listen_ip}",
        f"--address=/svc.cluster.local/{answer_ip}",
        "--address=/missing.cluster.local/",
        *extra,
    ]


class Demo:
    def __init__(self, port: int, duration: float) -> None:
        self.port = port
        self.duration = duration
        self.node = LabNode(pod_names=("web", "db", "dns"))
        self.agent: AgentProcess | None = None
        self.dnsmasq: subprocess.Popen | None = None
        self.sinks: list[socket.socket] = []

    def up(self) -> None:
        print(f"Building the demo node: bridge {self.node.bridge}, pods web, db, dns ...")
        self.node.up()
        for pod in self.node.pods.values():
            print(f"  pod {pod.name:4} {pod.ip:15} netns {pod.netns:14} veth {pod.host_veth}")
        db, dns_pod = self.node["db"], self.node["dns"]
        db.run(["iptables", "-A", "INPUT", "-p", "udp", "--dport", "5433", "-j", "DROP"])
        print("  iptables in db: DROP udp/5433")
        with db.entered():
            sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sink.bind(("0.0.0.0", 5432))
            self.sinks.append(sink)
        self.dnsmasq = dns_pod.popen(
            dnsmasq_argv(dns_pod.ip, db.ip), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        print(f"  dnsmasq in dns: *.svc.cluster.local -> {db.ip}, *.missing.cluster.local -> NXDOMAIN")
        self.agent = AgentProcess({"apiServer": {"host": "127.0.0.1", "port": self.port}})
        print("Starting retina-agent (compiling its eBPF programs) ...")
        self.agent.start()
        print(
            f"retina-agent ready: metrics at {self.agent.url}/metrics "
            f"(also /healthz, /readyz); log {self.agent.log_path}"
        )

    def traffic(self) -> None:
        web, db, dns_pod = self.node["web"], self.node["db"], self.node["dns"]
        end = time.monotonic() + self.duration
        rounds = 0
        print(f"Driving traffic for {self.duration:.0f}s (Ctrl-C ends the demo early) ...")
        while time.monotonic() < end:
            _udp(web, db.ip, 5432, 200)  # delivered
            _udp(web, db.ip, 5433, 20)  # dropped by iptables in db
            _closed_port(web, db.ip, 6000)  # no socket: RST
            names = [
                f"api{rounds}.svc.cluster.local",
                "db.svc.cluster.local",
                f"old{rounds}.missing.cluster.local",
            ]
            _dns(web, dns_pod.ip, names)
            rounds += 1
            time.sleep(1)
        time.sleep(2.5)  # one more harvest interval

    def summary(self) -> str:
        assert self.agent is not None
        return render_summary(self.agent.scrape(), self.agent.url)

    def down(self) -> None:
        if self.agent is not None:
            self.agent.cleanup()
        if self.dnsmasq is not None:
            self.dnsmasq.terminate()
            self.dnsmasq.wait(5)
        for s in self.sinks:
            s.close()
        self.node.down()  # namespaces go, and with them their iptables rules and qdiscs


def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    for le, count in buckets:
        if count >= q * total:
            return le
    return None


def render_summary(m: Metrics, url: str) -> str:
    lines = [BAR, "What retina-agent saw on this node", BAR]
    fwd = "networkobservability_forward_count"
    fwd_b = "networkobservability_forward_bytes"
    lines.append("Traffic through the node's ports (packetforward):")
    for d in ("ingress", "egress"):
        lines.append(
            f"  {d:8} {m.value(fwd, direction=d):>12,.0f} packets "
            f"{m.value(fwd_b, direction=d) / 1e6:>10.2f} MB"
        )
    drops = {}
    for name, labels, value in m.samples:
        if name == "networkobservability_drop_count":
            drops[labels["reason"]] = drops.get(labels["reason"], 0) + value
    lines.append("Drops by kernel reason (dropreason), most first:")
    for reason, n in sorted(drops.items(), key=lambda kv: -kv[1])[:8]:
        octets = m.value("networkobservability_drop_bytes", reason=reason)
        lines.append(f"  {reason:28} {n:>10,.0f} packets {octets:>12,.0f} bytes")
    if not drops:
        lines.append("  (none)")
    lines.append("DNS (dns):")
    lines.append(
        f"  requests {m.value('networkobservability_dns_request_count'):,.0f}, "
        f"responses {m.value('networkobservability_dns_response_count'):,.0f}"
    )
    for name, labels, value in m.samples:
        if name == "networkobservability_dns_responses_total":
            lines.append(f"  {labels['rcode']:9} {labels['qtype']:5} {value:>8,.0f}")
    buckets = sorted(
        (
            (float(lab["le"]), v)
            for n, lab, v in m.samples
            if n == "networkobservability_dns_latency_seconds_bucket"
        ),
        key=lambda b: b[0],
    )
    p50, p99 = _quantile(buckets, 0.5), _quantile(buckets, 0.99)
    if p50 is not None:
        lines.append(f"  latency: p50 <= {p50 * 1e3:.3f} ms, p99 <= {p99 * 1e3:.3f} ms")
    states = [(lab["state"], v) for n, lab, v in m.samples if n == "networkobservability_tcp_state" and v]
    lines.append(
        "TCP sockets on the node (linuxutil): " + (", ".join(f"{s} {v:.0f}" for s, v in states) or "none")
    )
    lines.append(f"TCP retransmissions (tcpretrans): {m.value('networkobservability_tcpretrans_count'):,.0f}")
    plugins = [
        (lab["plugin"], lab["state"], lab["reason"])
        for n, lab, v in m.samples
        if n == "controlplane_networkobservability_plugin_status"
    ]
    lines.append("Plugins: " + ", ".join(f"{p} {s}" + (f" ({r})" if r else "") for p, s, r in plugins))
    lines.append(f"Prometheus endpoint: {url}/metrics")
    lines.append(BAR)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="retina-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=10093, help="agent port (default 10093)")
    parser.add_argument(
        "--duration", type=float, default=20, help="seconds of traffic before the summary (default 20)"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("retina-demo: run as root (it creates network namespaces and loads eBPF)", file=sys.stderr)
        return 1
    if args.duration <= 0:
        print("retina-demo: --duration must be positive, like 20", file=sys.stderr)
        return 2
    demo = Demo(args.port, args.duration)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        demo.up()
        demo.traffic()
        wait_for(
            lambda: demo.agent.scrape().value("networkobservability_dns_request_count"),
            10,
            message="DNS counts",
        )
        print(demo.summary())
    except KeyboardInterrupt:
        print("\ninterrupted")
        if demo.agent is not None and demo.agent.proc is not None:
            print(demo.summary())
    finally:
        print("Cleaning up: agent stopped (its TC filters removed), namespaces, bridge and rules deleted.")
        demo.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
