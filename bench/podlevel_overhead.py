"""Pod-level (packetparser) overhead, side by side in one run (issue: Pod-level metrics).

1. UDP (64-byte datagrams) and TCP throughput between two pod namespaces (iperf3) with no
   agent, with the basic plugins, and with pod-level metrics on (packetparser + pod-level
   drops, DNS and retransmissions, remote context); agent CPU seconds per million packets.
   Target: packetparser keeps >= 95% of the no-agent packet rate.
2. Memory: the agent with 10,000 pods in its cache (a Kubernetes API emulator in a child
   process) and 100,000 live flow series (50,000 destination ports x 2 directions, labelled by
   port through a MetricsConfiguration). Target: RSS under 200 MiB.

Run as root: ``sudo .venv/bin/python bench/podlevel_overhead.py``. Prints tables, writes JSON
to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lab"))  # the test lab (not installed)
sys.path.insert(0, str(ROOT / "bench"))

from enrichment_memory import cluster  # noqa: E402
from report import write_report  # noqa: E402

from retina_lab import LabNode  # noqa: E402
from retina_lab.agent import AgentProcess, process_stats, wait_for  # noqa: E402
from retina_lab.cluster import apply_crds, metrics_configuration, seed_lab  # noqa: E402
from retina_lab.kube import KubeEmulator  # noqa: E402
from retina_lab.traffic import iperf3  # noqa: E402

POD_LEVEL_PLUGINS = ["linuxutil", "packetforward", "dropreason", "dns", "tcpretrans",
                     "packetparser"]


def iperf(node: LabNode, seconds: float, udp: bool) -> float:
    """Packets per second (UDP) or bits per second (TCP) from pod a to pod b."""
    out = iperf3(node["a"], node["b"], seconds, *(["-u", "-b", "0", "-l", "64"] if udp else []))
    if udp:
        s = out["sum"]
        return (s["packets"] - s.get("lost_packets", 0)) / s["seconds"]
    return out["sum_received"]["bits_per_second"]


def throughput(node: LabNode, runs: int, seconds: float) -> dict:
    udp = [iperf(node, seconds, True) for _ in range(runs)]
    tcp = [iperf(node, seconds, False) for _ in range(runs)]
    return {"udp_pps": statistics.median(udp), "tcp_bps": statistics.median(tcp),
            "udp_packets": sum(udp) * seconds}


def with_agent(node: LabNode, config: dict, runs: int, seconds: float) -> dict:
    agent = AgentProcess(config, interval="10s")
    try:
        agent.start()
        time.sleep(2)
        cpu0, _ = process_stats(agent.proc.pid)
        result = throughput(node, runs, seconds)
        cpu1, rss = process_stats(agent.proc.pid)
        result["agent_cpu_s_per_mpkt"] = (cpu1 - cpu0) / (result["udp_packets"] / 1e6)
        result["rss_mib"] = rss / 2**20
    finally:
        agent.cleanup()
    return result


def memory(node: LabNode, pods: int, ports: int) -> dict:
    """RSS of a pod-level agent with ``pods`` in its cache and 2 x ``ports`` flow series."""
    with KubeEmulator(workdir=Path(tempfile.mkdtemp()), history_limit=100) as kube:
        kube.seed(cluster(pods))
        seed_lab(kube, node)
        apply_crds(kube)
        kube.seed([metrics_configuration("bench", exclude=[], options=[
            {"metricName": "forward_count", "sourceLabels": ["podname"],
             "destinationLabels": ["podname", "port"], "additionalLabels": ["direction"]},
            {"metricName": "forward_bytes", "sourceLabels": ["podname"],
             "destinationLabels": ["podname"], "additionalLabels": ["direction"]}])])
        config = {"enablePodLevel": True, "remoteContext": True,
                  "enabledPlugin": POD_LEVEL_PLUGINS,
                  "podLevel": {"kubeconfig": str(kube.kubeconfig_path), "nodeName": "lab-node",
                               "maxSeries": 4 * ports},
                  "plugins": {"packetparser": {"maxFlows": 4 * ports}}}
        agent = AgentProcess(config, interval="5s")
        try:
            started = time.monotonic()
            agent.start(ready_timeout=300)
            ready_s = time.monotonic() - started
            _, rss_ready = process_stats(agent.proc.pid)
            a, b = node["a"], node["b"]
            with a.entered(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for port in range(10000, 10000 + ports):
                    s.sendto(b"x" * 32, (b.ip, port))
            series = "controlplane_networkobservability_series"
            m = wait_for(lambda: (lambda m: m if m.value(series) >= 2 * ports else None)(
                agent.scrape()), 120, 1, "the flow series")
            adv = "networkobservability_adv_forward_count"
            port_series = len(m.series(adv))
            time.sleep(11)  # two more harvests with every flow present
            cpu, rss = process_stats(agent.proc.pid)
            t = time.perf_counter()
            body = agent.scrape_text()
            render = time.perf_counter() - t
            return {"pods_in_cluster": pods, "series": int(m.value(series)),
                    "adv_forward_count_series": port_series,
                    "agent_ready_s": round(ready_s, 1), "rss_ready_mib": round(rss_ready / 2**20, 1),
                    "rss_with_series_mib": round(rss / 2**20, 1),
                    "metrics_render_s": round(render, 2), "metrics_mib": round(len(body) / 2**20, 1),
                    "agent_cpu_s_total": round(cpu, 1)}
        finally:
            agent.cleanup()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=6)
    p.add_argument("--pods", type=int, default=10_000)
    p.add_argument("--ports", type=int, default=50_000)
    p.add_argument("--memory-only", action="store_true", help="skip the throughput runs")
    args = p.parse_args()
    if args.memory_only:
        with LabNode(pod_names=("a", "b")) as node:
            print(json.dumps(memory(node, args.pods, args.ports), indent=2))
        return 0
    with LabNode(pod_names=("a", "b")) as node, \
            KubeEmulator(workdir=Path(tempfile.mkdtemp())) as kube:
        seed_lab(kube, node)
        none = throughput(node, args.runs, args.seconds)
        basic = with_agent(node, {}, args.runs, args.seconds)
        pod_level = with_agent(node, {
            "enablePodLevel": True, "remoteContext": True, "enabledPlugin": POD_LEVEL_PLUGINS,
            "podLevel": {"kubeconfig": str(kube.kubeconfig_path), "nodeName": "lab-node"}},
            args.runs, args.seconds)
        none_after = throughput(node, args.runs, args.seconds)
    with LabNode(pod_names=("a", "b")) as node:
        mem = memory(node, args.pods, args.ports)
    base_pps = statistics.mean([none["udp_pps"], none_after["udp_pps"]])
    base_bps = statistics.mean([none["tcp_bps"], none_after["tcp_bps"]])
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "udp_pps": {"none": round(base_pps), "basic": round(basic["udp_pps"]),
                    "pod_level": round(pod_level["udp_pps"])},
        "tcp_gbps": {"none": round(base_bps / 1e9, 2), "basic": round(basic["tcp_bps"] / 1e9, 2),
                     "pod_level": round(pod_level["tcp_bps"] / 1e9, 2)},
        "udp_ratio_pod_level": round(pod_level["udp_pps"] / base_pps, 3),
        "udp_ratio_basic": round(basic["udp_pps"] / base_pps, 3),
        "tcp_ratio_pod_level": round(pod_level["tcp_bps"] / base_bps, 3),
        "agent_cpu_s_per_mpkt": {"basic": round(basic["agent_cpu_s_per_mpkt"], 4),
                                 "pod_level": round(pod_level["agent_cpu_s_per_mpkt"], 4)},
        "memory": mem,
    }
    print(json.dumps(report, indent=2))
    write_report("podlevel_overhead", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
