"""dataSamplingRate (1-in-N pod-level flow and DNS events, counts scaled) and the
dataPathBudget controller, on real traffic."""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import pytest

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


def _tc_program_runs(pid: int) -> int:
    """Runs of the TC programs the process ``pid`` holds, as run-time accounting counted them
    (each BPF program fd's /proc fdinfo has its id and counters)."""
    runs: dict[str, int] = {}
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        with contextlib.suppress(OSError):
            fields = dict(line.split(":", 1) for line in info.read_text().splitlines() if ":" in line)
            if fields.get("prog_type", "").strip() == "3":  # BPF_PROG_TYPE_SCHED_CLS
                runs[fields["prog_id"].strip()] = int(fields.get("run_cnt", "0"))
    return sum(runs.values())


def _accounting_holders(besides: int) -> list[str]:
    """Processes other than ``besides`` holding run-time accounting on (a bpf-stats fd)."""
    held = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in (besides, os.getpid()):
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) == "anon_inode:bpf-stats" for fd in (proc / "fd").iterdir()):
                held.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
    return held


def test_budget_counts_run_time_in_a_window_of_each_interval_not_all_the_time(lab_node):
    """Accounting costs two clock reads per program run: a budget keeps it on for a tenth of
    each interval, so the programs' counted runs are a fraction of the packets they saw."""
    a, b = lab_node["a"], lab_node["b"]
    veths = {"interfaces": lab_node.host_veths}
    config = {
        "dataPathBudget": "50%",  # never exceeded: the rate stays 1
        "enabledPlugin": ["packetforward"],
        "plugins": {"packetforward": veths},
    }
    sink = udp_sink(b, 7311)
    try:
        with AgentProcess(config) as agent:
            # the first window opens at start; wait until one has been measured
            agent.wait_metric(
                lambda m: m.has("controlplane_networkobservability_datapath_cpu_ratio"),
                timeout=30,
                message="a first measured window",
            )
            before = _tc_program_runs(agent.proc.pid)
            sent = 0
            deadline = time.monotonic() + 4  # four 1 s intervals, traffic all along
            while time.monotonic() < deadline:
                send_udp(a, b.ip, 7311, 500, 64)
                sent += 500
            runs = _tc_program_runs(agent.proc.pid) - before
            assert agent.scrape().value(RATE) == 1
            others = _accounting_holders(agent.proc.pid)
    finally:
        sink.close()
    if others:  # accounting is global: another holder counts every run of ours too
        pytest.skip(f"another process holds BPF run-time accounting on: {others}")
    # every packet runs two programs (a's veth in, b's veth out); counted in windows only
    assert 0 < runs < 0.5 * 2 * sent, (runs, sent)
