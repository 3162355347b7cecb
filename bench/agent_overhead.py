"""Agent overhead, side by side in one run (issue: Foundation and the node agent).

- UDP packets per second between two pod namespaces (iperf3, 64-byte datagrams) with no agent
  and with the agent running every basic plugin: the throughput ratio (target >= 0.95);
- the agent's CPU seconds per million packets, and its CPU share while idle (target < 1%);
- the kernel-side cost of our BPF programs per packet (kernel.bpf_stats_enabled run_time_ns);
- the agent's steady-state RSS (target <= 64 MiB);
- the time to render /metrics.

Run as root from the repository: ``sudo .venv/bin/python bench/agent_overhead.py``. Prints a
table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab"))  # the test lab (not installed)

from report import write_report  # noqa: E402 - bench/report.py

from retina_lab import LabNode  # noqa: E402
from retina_lab.agent import AgentProcess, process_stats  # noqa: E402
from retina_lab.traffic import iperf3  # noqa: E402


def iperf_udp(node: LabNode, seconds: float, size: int) -> dict:
    """One iperf3 UDP run from pod a to pod b at full speed: packets/s received."""
    s = iperf3(node["a"], node["b"], seconds, "-u", "-b", "0", "-l", str(size))["sum"]
    received = s["packets"] - s.get("lost_packets", 0)
    return {"sent": s["packets"], "received": received, "seconds": s["seconds"],
            "pps": received / s["seconds"]}


def bpf_prog_stats() -> dict[str, tuple[int, int]]:
    """run_cnt and run_time_ns of our loaded BPF programs, by program name."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True)
    stats: dict[str, tuple[int, int]] = {}
    for prog in json.loads(out.stdout or "[]"):
        name = prog.get("name", "")
        if name.startswith(("pf_", "dns_", "on_kfree_skb", "on_tcp_retrans")):
            cnt, ns = stats.get(name, (0, 0))
            stats[name] = (cnt + prog.get("run_cnt", 0), ns + prog.get("run_time_ns", 0))
    return stats


def median_run(node: LabNode, runs: int, seconds: float, size: int) -> dict:
    results = [iperf_udp(node, seconds, size) for _ in range(runs)]
    return {"runs": results, "pps": statistics.median(r["pps"] for r in results),
            "packets": sum(r["received"] for r in results)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="iperf3 runs per mode (median)")
    p.add_argument("--seconds", type=float, default=8, help="seconds per iperf3 run")
    p.add_argument("--size", type=int, default=64, help="UDP payload bytes")
    p.add_argument("--idle", type=float, default=30, help="seconds of idle measurement")
    args = p.parse_args()

    with LabNode(pod_names=("a", "b")) as node:
        base_runs, agent_runs, agent_cpu, agent_packets = [], [], 0.0, 0
        prog1: dict = {}
        try:
            # Interleaved: no agent, agent, no agent, agent ... so that drift in the machine's
            # load hits both sides alike.
            for i in range(args.runs):
                base_runs.append(iperf_udp(node, args.seconds, args.size))
                agent = AgentProcess(interval="10s")
                try:
                    t0 = time.monotonic()
                    agent.start()
                    startup = time.monotonic() - t0
                    pid = agent.proc.pid
                    c0 = process_stats(pid)[0]
                    run = iperf_udp(node, args.seconds, args.size)  # bpf_stats off: no cost
                    c1 = process_stats(pid)[0]
                    agent_runs.append(run)
                    agent_cpu += c1 - c0
                    agent_packets += run["received"]
                    # Per-program cost in a separate, shorter run: bpf_stats itself adds two
                    # clock reads to every program run, so it stays off while rates are compared.
                    subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=1"], check=False)
                    p0 = bpf_prog_stats()
                    iperf_udp(node, min(3.0, args.seconds), args.size)
                    p1 = bpf_prog_stats()
                    subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=0"], check=False)
                    for name, (cnt, ns) in p1.items():
                        b_cnt, b_ns = p0.get(name, (0, 0))
                        a_cnt, a_ns = prog1.get(name, (0, 0))
                        prog1[name] = (a_cnt + cnt - b_cnt, a_ns + ns - b_ns)
                    if i == args.runs - 1:  # the last agent: idle CPU, RSS, render time
                        time.sleep(12)  # a harvest in steady state
                        cpu0, rss_idle = process_stats(pid)
                        time.sleep(args.idle)
                        cpu1, rss_after = process_stats(pid)
                        idle_share = (cpu1 - cpu0) / args.idle
                        render = []
                        for _ in range(20):
                            t = time.perf_counter()
                            with urllib.request.urlopen(agent.url + "/metrics") as r:
                                body = r.read()
                            render.append(time.perf_counter() - t)
                        rss_loaded = rss_after
                finally:
                    agent.cleanup()
        finally:
            subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=0"], check=False)
    baseline = {"runs": base_runs, "pps": statistics.median(r["pps"] for r in base_runs)}
    loaded = {"runs": agent_runs, "pps": statistics.median(r["pps"] for r in agent_runs),
              "packets": agent_packets}
    cpu1, cpu2 = 0.0, agent_cpu

    ns_per_run = {name: ns / cnt for name, (cnt, ns) in prog1.items() if cnt}
    agent_cpu = cpu2 - cpu1
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "udp_payload_bytes": args.size,
        "pps_no_agent": round(baseline["pps"]),
        "pps_with_agent": round(loaded["pps"]),
        "throughput_ratio": round(loaded["pps"] / baseline["pps"], 3),
        "agent_cpu_seconds_per_million_packets": round(agent_cpu / (loaded["packets"] / 1e6), 4),
        "agent_idle_cpu_share": round(idle_share, 5),
        "bpf_ns_per_run": {k: round(v, 1) for k, v in sorted(ns_per_run.items())},
        "agent_rss_mib_idle": round(rss_idle / 2**20, 1),
        "agent_rss_mib_after_load": round(max(rss_loaded, rss_after) / 2**20, 1),
        "metrics_render_ms_median": round(statistics.median(render) * 1e3, 2),
        "metrics_bytes": len(body),
        "agent_startup_seconds": round(startup, 2),
        "runs": {"no_agent": baseline["runs"], "with_agent": loaded["runs"]},
    }
    rows = [
        ("UDP pps, no agent", f"{report['pps_no_agent']:,}", ""),
        ("UDP pps, agent (all basic plugins)", f"{report['pps_with_agent']:,}", ""),
        ("throughput ratio", f"{report['throughput_ratio']:.3f}", ">= 0.95"),
        ("agent CPU s per million packets (user space)",
         f"{report['agent_cpu_seconds_per_million_packets']:.4f}", ""),
        ("agent CPU share idle", f"{report['agent_idle_cpu_share'] * 100:.3f}% of a core",
         "< 1%"),
        *[(f"BPF {k} per run (with bpf_stats)", f"{v:.1f} ns", "")
          for k, v in report["bpf_ns_per_run"].items()],
        ("agent RSS steady (idle)", f"{report['agent_rss_mib_idle']} MiB", "<= 64 MiB"),
        ("agent RSS after load", f"{report['agent_rss_mib_after_load']} MiB", "<= 64 MiB"),
        ("/metrics render (median of 20)",
         f"{report['metrics_render_ms_median']} ms ({report['metrics_bytes']:,} bytes)", ""),
        ("agent start-up (compile + attach)", f"{report['agent_startup_seconds']} s", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':{width}}  {'value':>28}  target")
    for name, value, target in rows:
        print(f"{name:{width}}  {value:>28}  {target}")
    write_report("agent_overhead", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
