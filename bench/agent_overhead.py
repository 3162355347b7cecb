"""Agent footprint: idle CPU, RSS, /metrics render time and start-up (issue: Foundation).

Throughput and per-packet kernel cost moved to ``bench/datapath.py`` (alternation in one
agent process, medians and spreads). What stays here is what needs the agent as its own
process, at rest:

- the agent's CPU share while idle (target < 0.5% of a core);
- its steady-state RSS with the basic plugins (target <= 64 MiB);
- the time to render /metrics, and start-up (load the BPF objects + attach).

Run as root from the repository: ``sudo .venv/bin/python bench/agent_overhead.py``. Prints a
table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab"))  # the test lab (not installed)

from report import write_report  # noqa: E402 - bench/report.py

from retina_lab import LabNode  # noqa: E402
from retina_lab.agent import AgentProcess, process_stats  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--idle", type=float, default=30, help="seconds of idle measurement")
    args = p.parse_args()

    with LabNode(pod_names=("a", "b")):
        agent = AgentProcess(interval="10s")
        try:
            t0 = time.monotonic()
            agent.start()
            startup = time.monotonic() - t0
            pid = agent.proc.pid
            time.sleep(12)  # a harvest in steady state
            cpu0, rss_idle = process_stats(pid)
            time.sleep(args.idle)
            cpu1, rss_after = process_stats(pid)
            render = []
            for _ in range(20):
                t = time.perf_counter()
                with urllib.request.urlopen(agent.url + "/metrics") as r:
                    body = r.read()
                render.append(time.perf_counter() - t)
        finally:
            agent.cleanup()
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "agent_idle_cpu_share": round((cpu1 - cpu0) / args.idle, 5),
        "agent_rss_mib_idle": round(rss_idle / 2**20, 1),
        "agent_rss_mib_after_idle": round(rss_after / 2**20, 1),
        "metrics_render_ms_median": round(statistics.median(render) * 1e3, 2),
        "metrics_bytes": len(body),
        "agent_startup_seconds": round(startup, 2),
    }
    rows = [
        ("agent CPU share idle", f"{report['agent_idle_cpu_share'] * 100:.3f}% of a core", "< 0.5%"),
        ("agent RSS steady (idle)", f"{report['agent_rss_mib_idle']} MiB", "<= 64 MiB"),
        ("agent RSS after idle period", f"{report['agent_rss_mib_after_idle']} MiB", "<= 64 MiB"),
        (
            "/metrics render (median of 20)",
            f"{report['metrics_render_ms_median']} ms ({report['metrics_bytes']:,} bytes)",
            "",
        ),
        ("agent start-up (load + attach)", f"{report['agent_startup_seconds']} s", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':{width}}  {'value':>28}  target")
    for name, value, target in rows:
        print(f"{name:{width}}  {value:>28}  {target}")
    write_report("agent_overhead", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
