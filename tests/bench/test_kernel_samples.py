"""bench/kernel_samples.py charges perf's samples to the BPF programs that were running, window
by window: BPF time measured without run-time accounting (bench/datapath.py's cross-check)."""

from __future__ import annotations

import ctypes
import os
import sys
import time
from pathlib import Path

from retina_agent.bpf.maps import BpfMap
from retina_lab.traffic import send_udp, udp_sink
from tests.bench.test_retina_design import bench_datapath
from tests.helpers.capture import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from kernel_samples import KernelSamples  # noqa: E402 - bench/kernel_samples.py


def test_samples_in_socket_filters_are_charged_to_their_windows_only(lab_node) -> None:
    a, b = lab_node["a"], lab_node["b"]
    design = bench_datapath().RetinaDesign(lab_node.host_veths, ["retina_packetforward", "retina_dns"])
    cpu = max(os.sched_getaffinity(0))
    affinity = os.sched_getaffinity(0)
    sink = udp_sink(b, 7321)
    sampler = KernelSamples(cpu, frequency=4000)
    windows: dict[str, list[dict]] = {"traffic": [], "quiet": []}
    os.sched_setaffinity(0, {cpu})  # the sender, and so every packet's path, on the sampled CPU
    try:
        design.attach()
        counts = BpfMap(design.bpf.map_fd("retina_pf"), ctypes.c_uint32, ctypes.c_uint64 * 2, percpu=True)

        def delivered() -> int:  # packets sent out of the veths (to the pods), counted by retina_pf
            return sum(v[0] for v in counts.lookup(ctypes.c_uint32(1)) or [])

        total = delivered()
        sampler.start()
        for _ in range(3):
            t0, sent = time.monotonic(), 0
            while time.monotonic() - t0 < 0.4:
                send_udp(a, b.ip, 7321, 200, 64)
                sent += 200
            total += sent
            # every datagram through both veths (ksoftirqd may still hold some) before it ends
            wait_until(lambda n=total: delivered() >= n, 10, "the window's datagrams delivered to pod b")
            windows["traffic"].append({"t0": t0, "t1": time.monotonic(), "packets": sent})
            t0 = time.monotonic()
            while time.monotonic() - t0 < 0.4:  # the CPU busy, but with no packets
                sum(range(10000))
            windows["quiet"].append({"t0": t0, "t1": time.monotonic(), "packets": 1})
        sampler.stop()
        charged = sampler.charge(windows)
    finally:
        os.sched_setaffinity(0, affinity)
        design.detach()
        sampler.close()
        sink.close()
    busy = charged["traffic"]
    assert busy["samples"].get("retina_design", 0) >= 5, charged
    # two socket filters on each of two veths: some ns per packet, far below a packet's cost
    assert 1 < busy["ns_per_packet"]["retina_design"] < 5000, charged
    # without packets the filters do not run; a stray ARP or IPv6 neighbour message may
    assert charged["quiet"]["samples"].get("retina_design", 0) <= busy["samples"]["retina_design"] / 20, (
        charged
    )
