"""Pod-level memory (issue: Pod-level metrics).

The agent with 10,000 pods in its cache (a Kubernetes API emulator in a child process) and
100,000 live flow series (50,000 destination ports x 2 directions, labelled by port through a
MetricsConfiguration). Target: RSS under 200 MiB. ``rss_peak_mib`` is the agent's high-water
mark (VmHWM) after the scrapes: what a memory limit on the agent's container must allow.

Throughput with pod level on moved to ``bench/datapath.py`` (alternation in one agent
process, medians and spreads).

Run as root: ``sudo .venv/bin/python bench/podlevel_overhead.py``. Prints JSON and writes it
to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import socket
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

POD_LEVEL_PLUGINS = ["linuxutil", "packetforward", "dropreason", "dns", "tcpretrans", "packetparser"]


def peak_rss(pid: int) -> int:
    """The process's RSS high-water mark (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def memory(node: LabNode, pods: int, ports: int) -> dict:
    """RSS of a pod-level agent with ``pods`` in its cache and 2 x ``ports`` flow series."""
    with KubeEmulator(workdir=Path(tempfile.mkdtemp()), history_limit=100) as kube:
        kube.seed(cluster(pods))
        seed_lab(kube, node)
        apply_crds(kube)
        kube.seed(
            [
                metrics_configuration(
                    "bench",
                    exclude=[],
                    options=[
                        {
                            "metricName": "forward_count",
                            "sourceLabels": ["podname"],
                            "destinationLabels": ["podname", "port"],
                            "additionalLabels": ["direction"],
                        },
                        {
                            "metricName": "forward_bytes",
                            "sourceLabels": ["podname"],
                            "destinationLabels": ["podname"],
                            "additionalLabels": ["direction"],
                        },
                    ],
                )
            ]
        )
        config = {
            "enablePodLevel": True,
            "remoteContext": True,
            "enabledPlugin": POD_LEVEL_PLUGINS,
            "podLevel": {
                "kubeconfig": str(kube.kubeconfig_path),
                "nodeName": "lab-node",
                "maxSeries": 4 * ports,
            },
            "plugins": {"packetparser": {"maxFlows": 4 * ports}},
        }
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
            m = wait_for(
                lambda: (lambda m: m if m.value(series) >= 2 * ports else None)(agent.scrape()),
                120,
                1,
                "the flow series",
            )
            adv = "networkobservability_adv_forward_count"
            port_series = len(m.series(adv))
            time.sleep(11)  # two more harvests with every flow present
            cpu, rss = process_stats(agent.proc.pid)
            t = time.perf_counter()
            body = agent.scrape_text()
            render = time.perf_counter() - t
            peak = peak_rss(agent.proc.pid)
            return {
                "pods_in_cluster": pods,
                "series": int(m.value(series)),
                "adv_forward_count_series": port_series,
                "agent_ready_s": round(ready_s, 1),
                "rss_ready_mib": round(rss_ready / 2**20, 1),
                "rss_with_series_mib": round(rss / 2**20, 1),
                "rss_peak_mib": round(peak / 2**20, 1),
                "metrics_render_s": round(render, 2),
                "metrics_mib": round(len(body) / 2**20, 1),
                "agent_cpu_s_total": round(cpu, 1),
            }
        finally:
            agent.cleanup()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pods", type=int, default=10_000)
    p.add_argument("--ports", type=int, default=50_000)
    args = p.parse_args()
    with LabNode(pod_names=("a", "b")) as node:
        report = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "memory": memory(node, args.pods, args.ports),
        }
    print(json.dumps(report, indent=2))
    write_report("podlevel_overhead", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
