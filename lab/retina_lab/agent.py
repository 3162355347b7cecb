"""Test and benchmark helpers around the agent process: its TC filters on the host, its CPU and memory.

Running the agent itself (``AgentProcess``, ``Metrics``, ``wait_for``, ``free_port``) is product
code used by ``retina-demo``: ``retina_agent.demo.agent_process``, imported here for the tests.
"""

from __future__ import annotations

import os
import subprocess

from retina_agent.demo.agent_process import AgentProcess, Metrics, free_port, wait_for

__all__ = ["AgentProcess", "Metrics", "free_port", "our_tc_filters", "process_stats", "wait_for"]


def our_tc_filters(pid: int | None = None) -> list[str]:
    """Our TC filters on the host as ``dev/direction/name@pid.start``; one agent's with ``pid``."""
    found = []
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        dev = line.split(": ")[1].split("@")[0]
        for direction in ("ingress", "egress"):
            out = subprocess.run(["tc", "filter", "show", "dev", dev, direction],
                                 capture_output=True, text=True).stdout
            found += [f"{dev}/{direction}/{w}" for w in out.split() if w.startswith("retina_")
                      and (pid is None or f"@{pid}." in w)]
    return found


def process_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds used, resident set size in bytes) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    with open(f"/proc/{pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return cpu, rss_kb * 1024
