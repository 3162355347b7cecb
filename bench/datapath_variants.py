"""Two versions of datapath.c timed against each other in one process (BPF_PROG_TEST_RUN).

    sudo .venv/bin/python bench/datapath_variants.py --a main --b HEAD
    sudo .venv/bin/python bench/datapath_variants.py --a /tmp/datapath.c --b agent/retina_agent/bpf/datapath.c

A version is a git revision (its ``datapath.c`` and the headers it includes, from
``agent/retina_agent/bpf``) or a path to a ``datapath.c`` (headers beside it, else this tree's).
Each is compiled with this tree's flags and ``-D`` values (``build.py``), loaded with every TC
plugin on at pod level, and run on pod a's 64-byte UDP packet to pod b at ingress and egress (one
packet's two programs on a node). Loops of ``--repeat`` runs alternate between the versions for
``--trials`` trials: ns per packet (ingress + egress), medians and quartiles, and the median of
the per-trial differences (b - a). Two paths: the flow in its fast slot (every slot of the
table holds the packet's key, so wherever a version's hash puts it, it is there) and a flow
without a slot (counted in ``flows``).

Caches are warm (the same packet again and again): this compares code, the steady state of one
busy flow; ``bench/datapath.py`` measures real traffic. A version whose fast table the agent
cannot map (before it was a mapped array) is timed on the second path only.
"""

from __future__ import annotations

import argparse
import ctypes
import re
import statistics
import subprocess
import tempfile
from pathlib import Path

from frames import udp_frame  # bench/frames.py

from retina_agent.bpf import build, datapath, syscall
from retina_agent.bpf.libbpf import BpfObject
from retina_agent.bpf.maps import BpfMap, possible_cpus
from retina_agent.plugins.packetparser import FlowKey, FlowValue
from retina_agent.podlevel.fastflows import SlotMemory

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIR = "agent/retina_agent/bpf"
SLOTS = 1024
IFINDEX = 1  # lo: the test run's skb->ifindex (any existing interface)
SLOT_PORT, MISS_PORT = 40000, 40001
SRC, DST = "10.1.0.2", "10.1.0.3"  # pod a, pod b


def source_tree(version: str, into: Path) -> Path:
    """``datapath.c`` of ``version`` (a path, or a git revision with its headers) under ``into``."""
    path = Path(version)
    if path.is_file():
        return path.resolve()
    into.mkdir(parents=True)
    todo, seen = ["datapath.c"], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        text = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{version}:{SOURCE_DIR}/{name}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (into / name).write_text(text)
        todo += [n for n in re.findall(r'^\s*#\s*include\s+"([^"]+)"', text, re.MULTILINE)]
    return into / "datapath.c"


def compile_source(source: Path, out: Path) -> Path:
    cmd = [
        "clang", *build.CFLAGS, *build._uapi_include(), f"-I{source.parent}", f"-I{build.PACKAGE_DIR}",
        *build._common_defines(), *build._datapath_defines(), "-c", str(source), "-o", str(out),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    return out


class Version:
    """One compiled version, loaded, with the packet's keys and (if it can) its fast table."""

    def __init__(self, label: str, obj_path: Path) -> None:
        self.label = label
        self.obj = BpfObject(obj_path)
        wanted = {
            **{c: 1 for c in datapath.FEATURE_CONSTANTS.values()},
            "pod_level": 1,
            "fast_flows_on": 1,
            "fast_flow_mask": SLOTS - 1,
            "fast_flow_bits": SLOTS.bit_length() - 1,
        }
        known = self.obj.constants()
        self.obj.set_constants({k: v for k, v in wanted.items() if k in known})
        self.obj.set_max_entries({"flows": 65536, "fast_flows": SLOTS * possible_cpus()})
        self.obj.load()
        all_bits = sum(datapath.FEATURE_BITS.values())
        BpfMap(self.obj.map_fd("dp_ifaces"), ctypes.c_uint32, ctypes.c_uint32).update(
            ctypes.c_uint32(IFINDEX), ctypes.c_uint32(all_bits)
        )
        BpfMap(self.obj.map_fd("dp_settings"), ctypes.c_uint32, datapath.DpSettings).update(
            ctypes.c_uint32(0), datapath.DpSettings(sample_rate=1, filter_enabled=0)
        )
        self.programs = {d: self.obj.program_fd(n) for d, n in datapath.PROGRAMS.items()}
        for fd in self.programs.values():  # each packet's flow, at each hook, into ``flows``
            for port in (SLOT_PORT, MISS_PORT):
                syscall.prog_test_run(fd, udp_frame(SRC, DST, port, 7777), 1, IFINDEX)
        flows = BpfMap(self.obj.map_fd("flows"), FlowKey, FlowValue, percpu=True)
        # the slot path's key at each hook: direction 1 at ingress (out of the pod), 0 at egress
        self.keys = {}
        for raw, _ in flows.raw_items():
            key = FlowKey.from_buffer_copy(raw)
            if key.sport == SLOT_PORT:
                self.keys["ingress" if key.direction == 1 else "egress"] = raw
        try:
            self.table: SlotMemory | None = SlotMemory(self.obj.map_fd("fast_flows"), SLOTS)
        except (OSError, ValueError):
            self.table = None

    def fill(self, key: bytes) -> None:
        """Every slot holds ``key``: found wherever this version's hash puts it."""
        assert self.table is not None
        for slot in range(SLOTS):
            if self.table.key(slot) is not None:
                self.table.clear(slot)
            self.table.write(slot, key)

    def time(self, path: str, repeat: int) -> float:
        """ns for one packet: the ingress run plus the egress run."""
        total = 0.0
        for direction, fd in self.programs.items():
            if path == "slot":
                self.fill(self.keys[direction])
            port = SLOT_PORT if path == "slot" else MISS_PORT
            total += syscall.prog_test_run(fd, udp_frame(SRC, DST, port, 7777), repeat, IFINDEX)[1]
        return total

    def close(self) -> None:
        if self.table is not None:
            self.table.close()
        self.obj.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", required=True, help="the baseline: a git revision or a datapath.c")
    p.add_argument("--b", required=True, help="the version compared with it")
    p.add_argument("--trials", type=int, default=40, help="alternations")
    p.add_argument("--repeat", type=int, default=100_000, help="runs per loop")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        versions = [
            Version(label, compile_source(source_tree(v, Path(tmp) / label), Path(tmp) / f"{label}.o"))
            for label, v in (("a", args.a), ("b", args.b))
        ]
    try:
        paths = ["slot", "miss"] if all(v.table is not None for v in versions) else ["miss"]
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.trials):
            for path in paths:
                for v in versions:
                    times.setdefault((v.label, path), []).append(v.time(path, args.repeat))
        print(f"a = {args.a}, b = {args.b}: ns per packet (ingress + egress), {args.trials} trials")
        for path in paths:
            what = "flow in its fast slot" if path == "slot" else "flow without a slot"
            for v in versions:
                q1, med, q3 = statistics.quantiles(times[(v.label, path)], n=4)
                print(f"  {what:22s} {v.label}: median {med:6.1f}  [{q1:.1f}, {q3:.1f}]")
            diffs = [b - a for a, b in zip(times[("a", path)], times[("b", path)], strict=True)]
            print(f"  {what:22s} b - a: median {statistics.median(diffs):+.1f} of the paired trials")
        if "slot" not in paths:
            print("  (a version's fast table cannot be mapped: the slot path is not compared)")
    finally:
        for v in versions:
            v.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
