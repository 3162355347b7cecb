"""Data-path overhead that can be trusted on a noisy, shared 2-core VM (issue 11).

One agent, in this process, for each plugin set (basic, pod level). Its BPF programs are
attached and detached in alternation (``Agent.pause_datapath`` / ``resume_datapath``): many
short runs, the order rotated every round, so drift in the machine's load hits every state
alike. A ratio is the median of the per-round ratios (attached / detached); its spread is the
interquartile range of those ratios.

Measured, in one run:
- 64-byte UDP packets/s and TCP Gbit/s from pod a to pod b (iperf3): ratio to detached;
- the physical limit of any TC program here: an empty program on the same hooks, alternated in
  the same UDP rounds (what attaching anything costs: TCX's dispatch, the call, the cache lines
  it touches), and our programs' rate against it, paired per round;
- Retina's packetforward design re-created: the same counters from a socket filter on an
  AF_PACKET/ETH_P_ALL raw socket (one per pod veth, as ``pkg/plugin/packetforward`` binds one
  to the host interface), alternated in the same rounds; beside it, like for like: Retina's
  basic plugins that see packets (packetforward and dns, whose Inspektor Gadget tracer is a
  second socket filter parsing every packet for DNS) against our basic plugins, and our data
  path doing packetforward's work alone against Retina's packetforward;
- kernel cost per packet from run-time accounting (BPF_ENABLE_STATS, held by an fd only in the
  ``+stats`` runs, since accounting itself costs two clock reads per program run): per
  program (ns per run) and summed over every program of ours that ran for a packet; as
  measured, and above the floor: an empty TC program on the same hooks, in the same rounds;
- the same programs in BPF_PROG_TEST_RUN loops on the UDP phase's packet (no accounting, warm
  caches: a lower bound), beside the empty program; at pod level twice: the flow in its fast
  slot (the steady state of a long flow) and before it had one (in ``flows``, the LRU hash: a
  short flow, or one whose slot another flow holds);
- CPU time in the programs from perf's cpu-clock samples of the traffic's CPU over the UDP
  phase, charged per state window (bench/kernel_samples.py): real traffic, no accounting;
- the cost of run-time accounting itself (paired ratio stats on / stats off);
- the agent's user-space CPU seconds per million packets (its threads, not this one).

The agent watches only this lab's veths (an interface glob), so other labs' traffic on a
shared machine neither runs our programs nor mixes into the figures. The whole benchmark runs
in a network namespace of its own (``--shared-netns`` to not), so no other agent on the
machine attaches its programs to the lab's veths. The traffic's tasks are pinned to one CPU
(``--cpu``, default the last) at ``--nice`` -10, this process's threads kept off that CPU: a
packet's whole path runs on that CPU, and the rest of the machine's work mostly elsewhere.

Run as root: ``sudo .venv/bin/python bench/datapath.py [--rounds 20 --seconds 1]``. Prints a
table and writes JSON to bench/results/ (keys ``ratio_udp_basic``, ``ratio_udp_pod_level``,
``ratio_tcp_pod_level``, ``bpf_ns_per_packet_basic``, ``bpf_ns_per_packet_pod_level``,
``ratio_udp_retina_design`` among them; like for like: ``ratio_udp_retina_basic_design``,
``bpf_ns_per_packet_retina_basic_design``, ``ratio_udp_packetforward_only``,
``bpf_ns_per_packet_packetforward_only``; the limit: ``ratio_udp_empty_program_<set>``,
``ratio_udp_<set>_vs_empty_program``; sampled by perf: ``bpf_sampled_ns_per_packet_<row>``;
the floor: ``empty_program_ns_per_run_<set>``,
``bpf_floor_ns_per_packet_<set>``, ``bpf_ns_per_packet_<set>_above_floor``; test runs:
``bpf_test_run_ns_per_packet_<set>[_above_floor]``, ``bpf_test_run_ns_per_packet_pod_level_no_slot``;
what run-time accounting itself costs per program run: ``bpf_stats_ns_per_run``).

Pod level's fast flow table (podlevel/fastflows.py) gives a busy flow a slot at a harvest: each
stream runs attached until the agent has placed its flow (and the test-run packet's) before its
rounds start, so the rounds measure long flows as they run, not their first seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lab"))  # the test lab (not installed)

from frames import udp_frame  # noqa: E402 - bench/frames.py
from kernel_samples import KernelSamples  # noqa: E402 - bench/kernel_samples.py

from retina_agent.agent import Agent  # noqa: E402
from retina_agent.bpf import datapath, syscall  # noqa: E402
from retina_agent.config import AgentConfig  # noqa: E402
from retina_agent.plugins.packetparser import FlowKey  # noqa: E402
from retina_lab import LabNode  # noqa: E402
from retina_lab.agent import free_port  # noqa: E402
from retina_lab.cluster import seed_lab  # noqa: E402
from retina_lab.kube import KubeEmulator  # noqa: E402

RESULTS = ROOT / "bench" / "results"
BASIC = ["linuxutil", "packetforward", "dropreason", "dns", "tcpretrans"]
POD_LEVEL = [*BASIC, "packetparser", "latency"]
ETH_P_ALL = 0x0003
SO_ATTACH_BPF = 50

# Retina's packetforward and dns, re-created (bpf/retina_design.c): socket filters that return 0
# (nothing is queued to the socket): per-CPU packet and byte counters by direction; DNS messages
# to a ring buffer.
BPF_DIR = Path(__file__).resolve().parent / "bpf"  # the two programs below, built by build.build


def bpf_object(name: str):
    """bench/bpf/<name>.c, built if stale, opened and loaded with libbpf (kept open: it owns the fds)."""
    from retina_agent.bpf import build
    from retina_agent.bpf.libbpf import BpfObject

    build.build(BPF_DIR)
    obj = BpfObject(BPF_DIR / "objects" / f"{name}.bpf.o")
    obj.load()
    return obj


# -- traffic ---------------------------------------------------------------------------------
class Stream:
    """One long iperf3 stream from pod a to pod b at full speed (64-byte UDP, or TCP).

    Rates are read from pod b's host veth (tx counters: what the node delivered to the pod)
    over short windows while the stream keeps running: no start-up in any window, and
    windows in different states are only a fraction of a second apart.
    """

    def __init__(self, node: LabNode, udp: bool, cpu: int | None = None, nice: int = 0) -> None:
        a, b = node["a"], node["b"]
        self.port = 5201 + int(node.lab_id, 16) % 1000 + (0 if udp else 1)
        self.stats = Path(f"/sys/class/net/{b.host_veth}/statistics")
        self.server = b.popen(
            ["iperf3", "-s", "-B", b.ip, "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while b.run(["ss", "-ltn", f"sport = :{self.port}"]).stdout.count("\n") < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("iperf3 server did not start")
            time.sleep(0.1)
        argv = ["iperf3", "-c", b.ip, "-p", str(self.port), "-t", "86400"]
        # TCP: fixed 4 MiB socket buffers (no autotuning swings; still far more than the
        # bandwidth-delay product of a veth, so the rate stays CPU-bound)
        argv += ["-u", "-b", "0", "-l", "64"] if udp else ["-w", "4M"]
        self.client = a.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0 if udp else 3.0)  # past slow start and the first bursts
        if cpu is not None:
            for proc in (self.client, self.server):
                pin(proc.pid, cpu, nice)

    def counters(self) -> tuple[int, int, float]:
        """(packets, bytes, monotonic time) delivered to pod b so far."""
        return (
            int((self.stats / "tx_packets").read_text()),
            int((self.stats / "tx_bytes").read_text()),
            time.monotonic(),
        )

    def cpu_ns(self) -> int:
        """CPU time of the sender and the receiver (their threads' scheduler run time, ns).

        This kernel charges softirq work to the task it interrupts (no IRQ time accounting),
        so the veth, bridge and TC path of each packet, our programs included, is in here.
        """
        total = 0
        for proc in (self.client, self.server):
            for task in Path(f"/proc/{proc.pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    total += int((task / "schedstat").read_text().split()[0])
        return total

    def close(self) -> None:
        for proc in (self.client, self.server):
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


def pin(pid: int, cpu: int, nice: int) -> None:
    """Every thread of ``pid`` on ``cpu`` at ``nice``: the packets' whole path (sender, veth,
    bridge, our programs, receiver) on one CPU that the machine's other work leaves alone."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        tid = int(task.name)
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, {cpu})
            os.setpriority(os.PRIO_PROCESS, tid, nice)


# -- the Retina-design row -------------------------------------------------------------------
class RetinaDesign:
    """Socket filters on AF_PACKET/ETH_P_ALL raw sockets, one socket per program per pod veth
    (bench/bpf/retina_design.c). Retina's dns plugin binds no interface (its socket in the host
    network namespace sees every interface's packets); bound to the lab's veths here, it sees
    the same packets of this lab and none of other labs on a shared machine."""

    def __init__(self, veths: list[str], programs: list[str]) -> None:
        self.bpf = bpf_object("retina_design")
        self.fds = {name: self.bpf.program_fd(name) for name in programs}
        self.veths = veths
        self.sockets: list[socket.socket] = []

    def attach(self) -> None:
        for veth in self.veths:
            for fd in self.fds.values():
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                s.bind((veth, ETH_P_ALL))
                s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, fd)
                self.sockets.append(s)

    def detach(self) -> None:
        for s in self.sockets:
            s.close()
        self.sockets.clear()

    def program_fds(self) -> dict[str, int]:
        return dict(self.fds)


# The Retina-design rows: packetforward alone (the row issue 11 defines), and Retina's basic
# plugins that see packets (packetforward and dns), against ours with the same work.
RETINA_ROWS = {
    "retina": ["retina_packetforward"],
    "retina_basic": ["retina_packetforward", "retina_dns"],
}


class PacketforwardOnly:
    """Our data path doing only packetforward's work on the lab's veths (its interface bits
    set to packetforward alone, tracepoint programs off): the like-for-like of the Retina
    packetforward row, in the same agent and rounds."""

    def __init__(self, agent: Agent, veths: list[str]) -> None:
        self.tc = agent.tc
        self.bits = datapath.InterfaceBits(
            agent.datapath.maps["dp_ifaces"], agent.datapath.maps["dp_ifaces_hi"]
        )
        self.indexes = [int(Path(f"/sys/class/net/{v}/ifindex").read_text()) for v in veths]
        self.saved: dict[int, int] = {}

    def attach(self) -> None:
        for index in self.indexes:
            self.saved[index] = self.bits.get(index)
            self.bits.set(index, datapath.FEATURE_BITS["packetforward"])
        self.tc.resume()

    def detach(self) -> None:
        self.tc.pause()
        for index, bits in self.saved.items():
            self.bits.set(index, bits)
        self.saved.clear()


class EmptyProgram:
    """An empty TC program on the same hooks: the floor of what run-time accounting reports
    for any program on this machine (its two clock reads and the call)."""

    def __init__(self, veths: list[str]) -> None:
        self.bpf = bpf_object("empty")
        self.fd = self.bpf.program_fd("empty")
        self.indexes = [int(Path(f"/sys/class/net/{v}/ifindex").read_text()) for v in veths]
        self.links: list[int] = []

    def attach(self) -> None:
        for index in self.indexes:
            for direction in ("ingress", "egress"):
                self.links.append(syscall.link_create_tcx(self.fd, index, direction))

    def detach(self) -> None:
        while self.links:
            os.close(self.links.pop())

    def program_fds(self) -> dict[str, int]:
        return {"empty": self.fd}


# -- measurement helpers ---------------------------------------------------------------------
def fast_slots_placed(agent: Agent, proto: int, ports: set[int]) -> int:
    """Flow keys in packetparser's fast flow table of protocol ``proto`` to or from one of
    ``ports`` (0 without a fast flow table)."""
    pp = agent.running.get("packetparser")
    fast = getattr(pp, "fast", None)
    if fast is None:
        return 0
    keys = [FlowKey.from_buffer_copy(raw) for raw in list(fast.placed)]
    return sum(1 for k in keys if k.proto == proto and {k.sport, k.dport} & ports)


def settle(agent: Agent, proto: int, ports: set[int], keys: int, timeout: float) -> float | None:
    """With our programs attached, wait until the fast flow table holds ``keys`` flow keys of
    ``proto`` on ``ports`` (placed at a harvest); seconds waited, None without a fast flow
    table."""
    pp = agent.running.get("packetparser")
    if getattr(pp, "fast", None) is None:
        return None
    t0 = time.monotonic()
    agent.resume_datapath()
    try:
        while fast_slots_placed(agent, proto, ports) < keys:
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"the fast flow table did not take the stream's flow in {timeout:.0f}s")
            time.sleep(0.2)
    finally:
        agent.pause_datapath()
    return round(time.monotonic() - t0, 1)


def stats_cost_per_run(empty: EmptyProgram, trials: int = 15, repeat: int = 200_000) -> dict:
    """What run-time accounting itself adds to each program run: the empty program in
    BPF_PROG_TEST_RUN loops with accounting on and off, alternated; medians."""
    frame = udp_frame("10.0.0.1", "10.0.0.2", 40000, TEST_RUN_PORT)
    runs: dict[str, list[int]] = {"on": [], "off": []}
    for _ in range(trials):
        fd = syscall.enable_stats()
        try:
            runs["on"].append(syscall.prog_test_run(empty.fd, frame, repeat, empty.indexes[0])[1])
        finally:
            os.close(fd)
        runs["off"].append(syscall.prog_test_run(empty.fd, frame, repeat, empty.indexes[0])[1])
    on, off = statistics.median(runs["on"]), statistics.median(runs["off"])
    return {
        "ns_per_run": round(on - off, 1),
        "empty_program_test_run_ns": {"accounting_on": on, "accounting_off": off},
        "note": f"median of {trials} loops of {repeat} runs each way",
    }


def thread_cpu_seconds(exclude: set[int]) -> float:
    """CPU seconds of this process's threads, except ``exclude`` (the benchmark's own)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for tid in os.listdir("/proc/self/task"):
        if int(tid) in exclude:
            continue
        with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def prog_times(fds: dict[str, int]) -> dict[str, tuple[int, int]]:
    """(run_cnt, run_time_ns) of each program."""
    out = {}
    for name, fd in fds.items():
        info = syscall.prog_info(fd)
        out[name] = (info.run_cnt, info.run_time_ns)
    return out


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 4:
        m = statistics.median(values)
        return min(values), m, max(values)
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def alternate(
    states: dict[str, tuple[Callable[[], None], Callable[[], None]]],
    stream: Stream,
    rounds: int,
    window: float,
    settle: float = 0.05,
    extra: Callable[[], dict] | None = None,
) -> dict[str, list[dict]]:
    """Every round measures each state once (enter, settle, window, leave); the order is
    rotated by round and reversed every other cycle (ABC CAB BCA, then backwards), so a
    drift in the machine's load hits every state alike."""
    names = list(states)
    results: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        order = names[k:] + names[:k]
        if (r // len(names)) % 2:
            order.reverse()
        for name in order:
            enter, leave = states[name]
            enter()
            try:
                time.sleep(settle)
                before = extra() if extra else {}
                c0 = stream.cpu_ns()
                p0, b0, t0 = stream.counters()
                time.sleep(window)
                p1, b1, t1 = stream.counters()
                c1 = stream.cpu_ns()
                after = extra() if extra else {}
            finally:
                leave()
            dt = t1 - t0
            cpu = (c1 - c0) / 1e9
            results[name].append(
                {
                    "pps": (p1 - p0) / dt,
                    "bps": (b1 - b0) * 8 / dt,
                    "packets": p1 - p0,
                    "seconds": dt,
                    "t0": t0,
                    "t1": t1,
                    # per CPU second of the traffic's own tasks: the rate a
                    # CPU-bound path would reach, whatever else the VM runs
                    "pkt_per_cpu": (p1 - p0) / cpu if cpu else 0,
                    "bytes_per_cpu": (b1 - b0) / cpu if cpu else 0,
                    "before": before,
                    "after": after,
                }
            )
    return results


def paired(results: dict[str, list[dict]], num: str, den: str, key: str = "pps") -> dict:
    ratios = [a[key] / b[key] for a, b in zip(results[num], results[den], strict=True) if b[key]]
    q1, med, q3 = quartiles(ratios)
    return {
        "median": round(med, 4),
        "q1": round(q1, 4),
        "q3": round(q3, 4),
        "iqr": round(q3 - q1, 4),
        "n": len(ratios),
    }


# -- one plugin set ----------------------------------------------------------------------------
HARVEST_S = 10.0  # the agent's metricsIntervalDuration
TEST_RUN_PORT = 7777  # the destination port of the BPF_PROG_TEST_RUN packet


def agent_config(node: LabNode, plugins: list[str], extra: dict) -> AgentConfig:
    lab_veths = [f"{node.bridge.replace('br', 'v', 1)}*"]  # this lab's pod veths only
    options = {"interfaces": lab_veths}
    data = {
        "apiServer": {"host": "127.0.0.1", "port": free_port()},
        "metricsIntervalDuration": f"{HARVEST_S:.0f}s",
        "enabledPlugin": plugins,
        "stateDir": tempfile.mkdtemp(prefix="retina-bench-"),
        "plugins": {
            "packetforward": options,
            "dns": options,
            "packetparser": options,
            "latency": dict(options),
        },
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            for k, v in value.items():
                data[key][k] = {**data[key].get(k, {}), **v} if isinstance(v, dict) else v
        else:
            data[key] = value
    return AgentConfig.model_validate(data)


def measure_set(
    node: LabNode,
    label: str,
    config: AgentConfig,
    rounds: int,
    window: float,
    designs: dict[str, RetinaDesign],
    stats_rounds: int,
    empty: EmptyProgram | None = None,
    test_run_trials: int = 15,
    traffic: tuple[int | None, int] = (None, 0),
    tcp_window: float | None = None,
) -> dict:
    agent = Agent(config)
    main_tid = threading.get_native_id()
    t0 = time.monotonic()
    agent.start()
    startup = time.monotonic() - t0
    runner = threading.Thread(target=agent.run, name="agent-harvest", daemon=True)
    runner.start()
    not_ready = {n: s.reason for n, s in agent.states.snapshot().items() if s.state != "running"}
    if not_ready:
        print(f"[{label}] plugins not running: {not_ready}", file=sys.stderr)
    our_fds = agent_program_fds(agent)
    tc_fds = {k: fd for k, fd in our_fds.items() if k.startswith("datapath.")}
    # right after start: the test-run packet's flow is new, in ``flows`` (harvests are 10 s apart)
    micro = test_run_cost(node, tc_fds, empty, trials=test_run_trials, repeat=20000) if tc_fds else None
    micro_no_slot = None
    stats_fd: list[int] = []

    def stats(on: bool) -> None:
        if on:
            stats_fd.append(syscall.enable_stats())
        else:
            os.close(stats_fd.pop())

    nothing = (lambda: None, lambda: None)
    ours = (agent.resume_datapath, agent.pause_datapath)
    ours_stats = (
        lambda: (agent.resume_datapath(), stats(True)),
        lambda: (stats(False), agent.pause_datapath()),
    )

    pf_only = (
        PacketforwardOnly(agent, node.host_veths) if designs and "packetforward" in agent.running else None
    )

    def kernel_time() -> dict:
        out = {"ours": prog_times(our_fds)}
        for name, design in designs.items():
            out[name] = prog_times(design.program_fds())
        if empty is not None:
            out["empty"] = prog_times(empty.program_fds())
        return out

    try:
        agent.pause_datapath()
        udp_stream = Stream(node, udp=True, cpu=traffic[0], nice=traffic[1])
        try:
            # the stream's flow and the test-run packet's, at a's veth and b's: four UDP keys
            ports = {udp_stream.port, TEST_RUN_PORT}
            settled = {"udp": settle(agent, socket.IPPROTO_UDP, ports, 4, timeout=3 * HARVEST_S)}
            if settled["udp"] is not None and tc_fds:
                micro_no_slot = micro
                micro = test_run_cost(node, tc_fds, empty, trials=test_run_trials, repeat=20000)
            states = {"off": nothing, "on": ours}
            for name, design in designs.items():
                states[name] = (design.attach, design.detach)
            if pf_only is not None:
                states["pf_only"] = (pf_only.attach, pf_only.detach)
            if empty is not None and syscall.tcx_supported():
                states["empty"] = (empty.attach, empty.detach)
            cpu0 = thread_cpu_seconds({main_tid})
            # perf samples of the traffic's CPU over the phase: BPF time without accounting
            sampler = (
                KernelSamples(traffic[0]) if traffic[0] is not None and KernelSamples.available() else None
            )
            if sampler is not None:
                sampler.start()
            try:
                udp = alternate(states, udp_stream, rounds, window)
            finally:
                if sampler is not None:
                    sampler.stop()
            # the agent's CPU over the whole phase (harvests included), per packet it saw
            cpu_s = thread_cpu_seconds({main_tid}) - cpu0
            # Kernel cost per packet: accounting on only in these windows.
            costs = {"on": ours, "on+stats": ours_stats}
            for name, design in designs.items():
                costs[f"{name}+stats"] = (
                    lambda d=design: (d.attach(), stats(True)),
                    lambda d=design: (stats(False), d.detach()),
                )
            if pf_only is not None:
                costs["pf_only+stats"] = (
                    lambda: (pf_only.attach(), stats(True)),
                    lambda: (stats(False), pf_only.detach()),
                )
            if empty is not None and syscall.tcx_supported():
                costs["empty+stats"] = (
                    lambda: (empty.attach(), stats(True)),
                    lambda: (stats(False), empty.detach()),
                )
            timed = alternate(costs, udp_stream, stats_rounds, window, extra=kernel_time)
        finally:
            udp_stream.close()
        tcp_stream = Stream(node, udp=False, cpu=traffic[0], nice=traffic[1])
        try:
            # data one way, ACKs the other, each at both veths: four TCP keys
            settled["tcp"] = settle(agent, socket.IPPROTO_TCP, {tcp_stream.port}, 4, timeout=3 * HARVEST_S)
            tcp = alternate({"off": nothing, "on": ours}, tcp_stream, rounds, tcp_window or window)
        finally:
            tcp_stream.close()
    finally:
        while stats_fd:
            os.close(stats_fd.pop())
        agent.stop()
        agent.shutdown()
        runner.join(15)

    cpu_packets = sum(r["packets"] for r in udp["on"])
    out = {
        "udp": paired(udp, "on", "off"),
        "tcp": paired(tcp, "on", "off", key="bps"),
        "udp_per_cpu": paired(udp, "on", "off", key="pkt_per_cpu"),
        "tcp_per_cpu": paired(tcp, "on", "off", key="bytes_per_cpu"),
        "udp_pps_off_median": round(statistics.median(r["pps"] for r in udp["off"])),
        "udp_pps_on_median": round(statistics.median(r["pps"] for r in udp["on"])),
        "tcp_gbps_off_median": round(statistics.median(r["bps"] for r in tcp["off"]) / 1e9, 2),
        "tcp_gbps_on_median": round(statistics.median(r["bps"] for r in tcp["on"]) / 1e9, 2),
        "bpf": kernel_cost(timed["on+stats"], "ours"),
        "stats_cost": paired(timed, "on+stats", "on"),
        "agent_cpu_s_per_mpkt": round(cpu_s / (cpu_packets / 1e6), 5) if cpu_packets else None,
        "agent_startup_s": round(startup, 1),
        "settle_s": settled,
        "plugins_not_running": not_ready,
        "windows": {
            f"{kind}.{state}": [[round(w["pps"]), round(w["pkt_per_cpu"])] for w in ws]
            for kind, res in (("udp", udp), ("tcp", tcp))
            for state, ws in res.items()
        },
    }
    for name in designs:
        out[f"{name}_udp"] = paired(udp, name, "off")
        out[f"{name}_udp_per_cpu"] = paired(udp, name, "off", key="pkt_per_cpu")
        out[f"{name}_bpf"] = kernel_cost(timed[f"{name}+stats"], name)
    if "empty" in udp:
        out["empty_udp"] = paired(udp, "empty", "off")
        out["udp_vs_empty"] = paired(udp, "on", "empty")
    if pf_only is not None:
        out["pf_only_udp"] = paired(udp, "pf_only", "off")
        out["pf_only_bpf"] = kernel_cost(timed["pf_only+stats"], "ours")
    if "empty+stats" in timed:
        # The floor: an empty TC program on the same hooks, in the same rounds. What it costs per
        # run (the TCX dispatch, the call, and accounting's two clock reads) is what any program
        # costs here; ours above it is the work our code does.
        floor = kernel_cost(timed["empty+stats"], "empty")["ns_per_run"].get("empty")
        out["empty_program_ns_per_run"] = floor
        if floor:
            bpf = out["bpf"]
            tc_runs = {
                k: n for k, n in bpf["runs_per_packet"].items() if not k.split(".")[-1].startswith("on_")
            }
            bpf["floor_ns_per_packet"] = round(floor * sum(tc_runs.values()), 1)
            bpf["tc_ns_per_packet_above_floor"] = round(
                sum((bpf["ns_per_run"][k] - floor) * n for k, n in tc_runs.items()), 1
            )
    if micro is not None:
        out["bpf_test_run"] = micro
    if micro_no_slot is not None:
        out["bpf_test_run_no_slot"] = micro_no_slot
    if sampler is not None:
        try:
            out["bpf_sampled"] = sampler.charge(udp)
        finally:
            sampler.close()
    else:
        out["bpf_sampled"] = {
            "note": "not measured: perf is not installed or the traffic is not pinned (--cpu)"
        }
    return out


def agent_program_fds(agent: Agent) -> dict[str, int]:
    """Every BPF program of the agent: the TC data path's (if it has one) and the plugins'."""
    fds = {}
    dp = getattr(agent, "datapath", None)
    if dp is not None:
        fds.update({f"datapath.{d}": fd for d, fd in dp.programs.items()})
    for name, plugin in agent.running.items():
        if plugin.loaded is not None:
            fds.update({f"{name}.{p}": fd for p, fd in plugin.loaded.programs.items()})
    return fds


def kernel_cost(windows: list[dict], who: str) -> dict:
    """Run time of every program over the windows, per packet delivered and per run."""
    runs: dict[str, list[int]] = {}
    packets = 0
    for w in windows:
        packets += w["packets"]
        for name, (cnt, ns) in w["after"][who].items():
            b_cnt, b_ns = w["before"][who][name]
            acc = runs.setdefault(name, [0, 0])
            acc[0] += cnt - b_cnt
            acc[1] += ns - b_ns
    ran = {k: v for k, v in runs.items() if v[0]}
    tc = {k: v for k, v in ran.items() if not k.split(".")[-1].startswith("on_")}
    return {
        "ns_per_packet": round(sum(ns for _, ns in tc.values()) / packets, 1) if packets else None,
        "note": "ns_per_packet: TC (and socket filter) programs per packet delivered; "
        "tracepoint programs (on_*) run per event and are listed per run only",
        "ns_per_run": {k: round(ns / cnt, 1) for k, (cnt, ns) in sorted(ran.items())},
        "runs_per_packet": {k: round(cnt / packets, 3) for k, (cnt, _) in sorted(ran.items())}
        if packets
        else {},
    }


def test_run_cost(
    node: LabNode, programs: dict[str, int], empty: EmptyProgram | None, trials: int, repeat: int
) -> dict:
    """Cost per run without run-time accounting: BPF_PROG_TEST_RUN loops of our programs on
    the UDP phase's packet (pod a's veth at ingress, pod b's at egress), alternated with the
    empty program; medians of ``trials`` loops of ``repeat`` runs. Every map stays warm (the
    same flow each run): the steady state of one long flow, not a cache-cold packet."""
    a, b = node["a"], node["b"]
    frame = udp_frame(a.ip, b.ip, 40000, TEST_RUN_PORT)
    index = {v: int(Path(f"/sys/class/net/{v}/ifindex").read_text()) for v in (a.host_veth, b.host_veth)}
    hooks = {"ingress": index[a.host_veth], "egress": index[b.host_veth]}
    runs: dict[str, list[float]] = {}
    for _ in range(trials):
        for name, fd in programs.items():
            ifindex = next((i for d, i in hooks.items() if name.endswith(d)), 0)
            _, ns = syscall.prog_test_run(fd, frame, repeat, ifindex)
            runs.setdefault(name, []).append(ns)
        if empty is not None:
            _, ns = syscall.prog_test_run(empty.fd, frame, repeat, hooks["ingress"])
            runs.setdefault("empty", []).append(ns)
    ns_per_run = {k: statistics.median(v) for k, v in runs.items()}
    floor = ns_per_run.get("empty")
    ours = {k: v for k, v in ns_per_run.items() if k != "empty"}
    return {
        "ns_per_run": {k: round(v, 1) for k, v in ns_per_run.items()},
        "ns_per_packet": round(sum(ours.values()), 1),
        "ns_per_packet_above_floor": round(sum(v - floor for v in ours.values()), 1) if floor else None,
        "accounting_on": Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip() == "1",
        "note": f"median of {trials} loops of {repeat} runs; one ingress + one egress run per packet",
    }


NODE_NETNS_ENV = "RETINA_BENCH_NODE_NETNS"


def run_in_node_netns() -> int:
    """Run this benchmark again inside a network namespace of its own (the "node"): its lab,
    agent and programs are then invisible to any other agent on the machine (another helper's
    test agent attaches to every veth it sees, and its programs would run, and pull packets,
    on ours in both the attached and the detached windows)."""
    name = f"rbench-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        env = {**os.environ, NODE_NETNS_ENV: name}
        # ip netns exec also mounts a /sys of the namespace (the veth counters are read there)
        argv = ["ip", "netns", "exec", name, sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]]
        return subprocess.run(argv, env=env).returncode
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=100, help="alternation rounds per comparison")
    p.add_argument("--window", type=float, default=0.3, help="seconds measured per state")
    p.add_argument(
        "--tcp-window",
        type=float,
        default=0.6,
        help="seconds measured per state in the TCP phase (a TCP stream's rate swings more)",
    )
    p.add_argument(
        "--stats-rounds",
        type=int,
        default=30,
        help="rounds with run-time accounting on (kernel cost per packet)",
    )
    p.add_argument("--only", choices=("basic", "pod_level"), help="one plugin set only")
    p.add_argument(
        "--shared-netns",
        action="store_true",
        help="run in this network namespace (default: a node namespace of its own, so that other "
        "agents on the machine, whose default interface selection takes every veth, cannot attach "
        "their programs to the benchmark's veths)",
    )
    p.add_argument(
        "--cpu",
        type=int,
        default=os.cpu_count() - 1,
        help="CPU for the traffic (sender and receiver, so every packet's path); -1: not pinned",
    )
    p.add_argument("--nice", type=int, default=-10, help="nice value of the traffic's tasks")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.shared_netns and os.environ.get(NODE_NETNS_ENV) is None:
        return run_in_node_netns()

    report: dict = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "rounds": args.rounds,
        "window_s": args.window,
        "tcp_window_s": args.tcp_window,
        "kernel": os.uname().release,
        "node_netns": os.environ.get(NODE_NETNS_ENV),
        "traffic_cpu": args.cpu if args.cpu >= 0 else None,
        "traffic_nice": args.nice,
    }
    traffic = (args.cpu if args.cpu >= 0 else None, args.nice)
    if traffic[0] is not None and len(os.sched_getaffinity(0)) > 1:
        # this process (the agent's threads, attach/detach, harvests) off the traffic's CPU
        os.sched_setaffinity(0, os.sched_getaffinity(0) - {traffic[0]})
    with LabNode(pod_names=("a", "b")) as node, KubeEmulator(workdir=Path(tempfile.mkdtemp())) as kube:
        seed_lab(kube, node)
        designs = {name: RetinaDesign(node.host_veths, programs) for name, programs in RETINA_ROWS.items()}
        empty = EmptyProgram(node.host_veths)
        try:
            report["bpf_stats_cost"] = stats_cost_per_run(empty)
            if args.only in (None, "basic"):
                report["basic"] = measure_set(
                    node,
                    "basic",
                    agent_config(node, BASIC, {}),
                    args.rounds,
                    args.window,
                    designs,
                    args.stats_rounds,
                    empty,
                    traffic=traffic,
                    tcp_window=args.tcp_window,
                )
            if args.only in (None, "pod_level"):
                # latency times the API server the kubeconfig names (the emulator)
                extra = {
                    "enablePodLevel": True,
                    "remoteContext": True,
                    "podLevel": {"kubeconfig": str(kube.kubeconfig_path), "nodeName": "lab-node"},
                }
                report["pod_level"] = measure_set(
                    node,
                    "pod_level",
                    agent_config(node, POD_LEVEL, extra),
                    args.rounds,
                    args.window,
                    {},
                    args.stats_rounds,
                    empty,
                    traffic=traffic,
                    tcp_window=args.tcp_window,
                )
        finally:
            for design in designs.values():
                design.detach()
            empty.detach()
    basic, pod = report.get("basic", {}), report.get("pod_level", {})
    report.update(
        {
            "ratio_udp_basic": basic.get("udp", {}).get("median"),
            "ratio_tcp_basic": basic.get("tcp", {}).get("median"),
            "ratio_udp_pod_level": pod.get("udp", {}).get("median"),
            "ratio_tcp_pod_level": pod.get("tcp", {}).get("median"),
            "ratio_udp_retina_design": basic.get("retina_udp", {}).get("median"),
            "ratio_udp_retina_basic_design": basic.get("retina_basic_udp", {}).get("median"),
            "ratio_udp_packetforward_only": basic.get("pf_only_udp", {}).get("median"),
            # the physical limit: an empty TC program on the same hooks, and ours against it
            "ratio_udp_empty_program_basic": basic.get("empty_udp", {}).get("median"),
            "ratio_udp_empty_program_pod_level": pod.get("empty_udp", {}).get("median"),
            "ratio_udp_basic_vs_empty_program": basic.get("udp_vs_empty", {}).get("median"),
            "ratio_udp_pod_level_vs_empty_program": pod.get("udp_vs_empty", {}).get("median"),
            "cpu_ratio_udp_basic": basic.get("udp_per_cpu", {}).get("median"),
            "cpu_ratio_udp_pod_level": pod.get("udp_per_cpu", {}).get("median"),
            "cpu_ratio_tcp_basic": basic.get("tcp_per_cpu", {}).get("median"),
            "cpu_ratio_tcp_pod_level": pod.get("tcp_per_cpu", {}).get("median"),
            "cpu_ratio_udp_retina_design": basic.get("retina_udp_per_cpu", {}).get("median"),
            "bpf_ns_per_packet_basic": basic.get("bpf", {}).get("ns_per_packet"),
            "bpf_ns_per_packet_pod_level": pod.get("bpf", {}).get("ns_per_packet"),
            "bpf_ns_per_packet_retina_design": basic.get("retina_bpf", {}).get("ns_per_packet"),
            "bpf_ns_per_packet_retina_basic_design": basic.get("retina_basic_bpf", {}).get("ns_per_packet"),
            "bpf_ns_per_packet_packetforward_only": basic.get("pf_only_bpf", {}).get("ns_per_packet"),
            # perf's samples, no accounting (a cross-check): TC programs per packet
            "bpf_sampled_ns_per_packet_basic": sampled(basic, "on", "tc"),
            "bpf_sampled_ns_per_packet_pod_level": sampled(pod, "on", "tc"),
            "bpf_sampled_ns_per_packet_retina_design": sampled(basic, "retina", "retina_design"),
            "bpf_sampled_ns_per_packet_retina_basic_design": sampled(basic, "retina_basic", "retina_design"),
            "bpf_sampled_ns_per_packet_packetforward_only": sampled(basic, "pf_only", "tc"),
            "bpf_sampled_ns_per_packet_empty_program": sampled(basic, "empty", "empty"),
            # the floor, measured in the same run as each figure above (an empty TC program on
            # the same hooks), and our cost above it
            "empty_program_ns_per_run": basic.get("empty_program_ns_per_run"),
            "empty_program_ns_per_run_basic": basic.get("empty_program_ns_per_run"),
            "empty_program_ns_per_run_pod_level": pod.get("empty_program_ns_per_run"),
            "bpf_floor_ns_per_packet_basic": basic.get("bpf", {}).get("floor_ns_per_packet"),
            "bpf_floor_ns_per_packet_pod_level": pod.get("bpf", {}).get("floor_ns_per_packet"),
            "bpf_ns_per_packet_basic_above_floor": basic.get("bpf", {}).get("tc_ns_per_packet_above_floor"),
            "bpf_ns_per_packet_pod_level_above_floor": pod.get("bpf", {}).get("tc_ns_per_packet_above_floor"),
            # BPF_PROG_TEST_RUN loops: per run without accounting, maps warm
            "bpf_test_run_ns_per_packet_basic": basic.get("bpf_test_run", {}).get("ns_per_packet"),
            "bpf_test_run_ns_per_packet_pod_level": pod.get("bpf_test_run", {}).get("ns_per_packet"),
            "bpf_test_run_ns_per_packet_basic_above_floor": basic.get("bpf_test_run", {}).get(
                "ns_per_packet_above_floor"
            ),
            "bpf_test_run_ns_per_packet_pod_level_above_floor": pod.get("bpf_test_run", {}).get(
                "ns_per_packet_above_floor"
            ),
            "bpf_test_run_ns_per_packet_pod_level_no_slot": pod.get("bpf_test_run_no_slot", {}).get(
                "ns_per_packet"
            ),
            "bpf_stats_ns_per_run": report.get("bpf_stats_cost", {}).get("ns_per_run"),
        }
    )
    print_table(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"datapath-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"written {out}")
    return 0


def sampled(plugin_set: dict, state: str, label: str) -> float | None:
    """A sampled ns-per-packet figure of the report, or None."""
    return plugin_set.get("bpf_sampled", {}).get(state, {}).get("ns_per_packet", {}).get(label)


def print_table(report: dict) -> None:
    rows = []
    if "bpf_stats_cost" in report:
        c = report["bpf_stats_cost"]
        t = c["empty_program_test_run_ns"]
        rows.append(
            (
                "run-time accounting: ns it adds per program run",
                str(c["ns_per_run"]),
                "",
                f"the empty program in BPF_PROG_TEST_RUN: {t['accounting_on']} ns with accounting, "
                f"{t['accounting_off']} without",
            )
        )
    for label in ("basic", "pod_level"):
        r = report.get(label)
        if not r:
            continue
        u, t = r["udp"], r["tcp"]
        rows.append(
            (
                f"{label}: UDP 64 B pps ratio",
                f"{u['median']:.3f}",
                f"[{u['q1']:.3f}, {u['q3']:.3f}]",
                f"{r['udp_pps_on_median']:,} / {r['udp_pps_off_median']:,} pps",
            )
        )
        rows.append(
            (
                f"{label}: TCP Gbit/s ratio",
                f"{t['median']:.3f}",
                f"[{t['q1']:.3f}, {t['q3']:.3f}]",
                f"{r['tcp_gbps_on_median']} / {r['tcp_gbps_off_median']} Gbit/s",
            )
        )
        for key, what, detail in (
            ("empty_udp", "empty TC program: UDP pps ratio", "the limit for any program on these hooks"),
            ("udp_vs_empty", "UDP pps ratio to the empty program", "ours / empty, paired per round"),
        ):
            if key in r:
                c = r[key]
                rows.append(
                    (f"{label}: {what}", f"{c['median']:.3f}", f"[{c['q1']:.3f}, {c['q3']:.3f}]", detail)
                )
        for key, what in (
            ("udp_per_cpu", "UDP packets per CPU-second ratio"),
            ("tcp_per_cpu", "TCP bytes per CPU-second ratio"),
        ):
            c = r[key]
            rows.append(
                (
                    f"{label}: {what}",
                    f"{c['median']:.3f}",
                    f"[{c['q1']:.3f}, {c['q3']:.3f}]",
                    "sender+receiver tasks' CPU",
                )
            )
        bpf = r["bpf"]
        rows.append(
            (
                f"{label}: BPF ns per packet, as measured",
                str(bpf["ns_per_packet"]),
                "",
                "bpf_stats, TC hooks; ns per run: "
                + ", ".join(f"{k.split('.')[-1]} {v}" for k, v in bpf["ns_per_run"].items()),
            )
        )
        if "empty_program_ns_per_run" in r:
            rows.append(
                (
                    f"{label}: BPF ns per packet, floor",
                    str(bpf.get("floor_ns_per_packet")),
                    "",
                    f"empty TC program, same hooks, same run: {r['empty_program_ns_per_run']} ns per run",
                )
            )
            rows.append(
                (
                    f"{label}: BPF ns per packet, above floor",
                    str(bpf.get("tc_ns_per_packet_above_floor")),
                    "",
                    "as measured minus the floor: the work of our code",
                )
            )
        for key, what in (("bpf_test_run", ""), ("bpf_test_run_no_slot", ", no fast slot")):
            if key not in r:
                continue
            tr = r[key]
            where = " (flow in its fast slot)" if "bpf_test_run_no_slot" in r and not what else ""
            rows.append(
                (
                    f"{label}: BPF ns per packet, test run{what}",
                    str(tr["ns_per_packet"]),
                    "",
                    f"BPF_PROG_TEST_RUN, no accounting, warm maps{where}; above its empty program: "
                    f"{tr['ns_per_packet_above_floor']}; ns per run: "
                    + ", ".join(f"{k.split('.')[-1]} {v}" for k, v in tr["ns_per_run"].items()),
                )
            )
        if "on" in r.get("bpf_sampled", {}):
            on = r["bpf_sampled"]["on"]
            rows.append(
                (
                    f"{label}: BPF ns per packet, sampled",
                    str(on["ns_per_packet"].get("tc")),
                    "",
                    f"perf cpu-clock samples in our TC programs, no accounting ({on['samples'].get('tc', 0)} "
                    f"samples); tracepoint programs: {on['ns_per_packet'].get('tracepoint')}",
                )
            )
        if "empty" in r.get("bpf_sampled", {}):
            rows.append(
                (
                    f"{label}: empty program ns per packet, sampled",
                    str(r["bpf_sampled"]["empty"]["ns_per_packet"].get("empty")),
                    "",
                    "perf cpu-clock samples in the empty TC program, same hooks",
                )
            )
        s = r["stats_cost"]
        rows.append(
            (
                f"{label}: run-time accounting on/off",
                f"{s['median']:.3f}",
                f"[{s['q1']:.3f}, {s['q3']:.3f}]",
                "pps ratio, programs attached",
            )
        )
        rows.append((f"{label}: agent user CPU s per Mpkt", str(r["agent_cpu_s_per_mpkt"]), "", ""))
        for key, what, how in (
            ("retina", "Retina design, packetforward", "AF_PACKET socket filter"),
            ("retina_basic", "Retina design, packetforward+dns", "two AF_PACKET socket filters"),
            ("pf_only", "ours, packetforward only", "our TC program, packetforward's work alone"),
        ):
            if f"{key}_udp" not in r:
                continue
            ru = r[f"{key}_udp"]
            rows.append(
                (
                    f"{what}: UDP 64 B pps ratio",
                    f"{ru['median']:.3f}",
                    f"[{ru['q1']:.3f}, {ru['q3']:.3f}]",
                    how,
                )
            )
            if f"{key}_udp_per_cpu" in r:
                rc = r[f"{key}_udp_per_cpu"]
                rows.append(
                    (
                        f"{what}: UDP packets per CPU-second",
                        f"{rc['median']:.3f}",
                        f"[{rc['q1']:.3f}, {rc['q3']:.3f}]",
                        "",
                    )
                )
            rows.append(
                (f"{what}: BPF ns per packet", str(r[f"{key}_bpf"]["ns_per_packet"]), "", "as measured")
            )
            label = "tc" if key == "pf_only" else "retina_design"
            if sampled(r, key, label) is not None:
                rows.append((f"{what}: BPF ns per packet, sampled", str(sampled(r, key, label)), "", "perf"))
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':{width}}  {'median':>8}  {'IQR':>16}  detail")
    for name, med, iqr, detail in rows:
        print(f"{name:{width}}  {med:>8}  {iqr:>16}  {detail}")


if __name__ == "__main__":
    sys.exit(main())
