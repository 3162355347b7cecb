"""What a harvest pays to read packetparser's fast flow table: in place, or copied whole.

The fast flow table (``podlevel/fastflows.py``) is a mapped plain array: a harvest reads the
placed slots' counters from the mapping. Before, it was a per-CPU array, which user space can
only copy whole (every slot of every CPU, in batches) to find the placed ones. This benchmark
builds both tables at the same size with the same placed flows and times, alternated in one
run, one read of each (``FastFlows.raw_items`` against a batch read of a per-CPU array of
``FastFlowSlot`` values); medians and quartiles of ``--reads`` reads each.

    sudo .venv/bin/python bench/fast_table_harvest.py --slots 1024 --placed 16

No traffic and no programs: only the two maps, created here and closed at the end.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import struct
import time

from retina_agent.bpf import syscall
from retina_agent.bpf.maps import BpfMap, possible_cpus
from retina_agent.podlevel.fastflows import SLOT_SIZE, USED_OFFSET, FastFlows, FastFlowSlot, slot_of

BPF_MAP_CREATE = 0
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_F_MMAPABLE = 1 << 10


def create_array(map_type: int, entries: int, flags: int = 0) -> int:
    attr = struct.pack("=6I", map_type, 4, SLOT_SIZE, entries, flags, 0) + bytes(48)
    return syscall.bpf(BPF_MAP_CREATE, attr)


def read_copied(table: BpfMap, ncpu: int) -> int:
    """The per-CPU table's harvest read: every slot copied, the placed ones kept."""
    placed = 0
    for _, raw in table.raw_items():
        if raw[USED_OFFSET : USED_OFFSET + 4] != b"\0\0\0\0":
            placed += 1
    return placed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slots", type=int, default=1024, help="slots per CPU (a power of two)")
    p.add_argument("--placed", type=int, default=16, help="flows placed in the table")
    p.add_argument("--reads", type=int, default=200, help="reads of each table")
    args = p.parse_args()
    ncpu = possible_cpus()
    mapped_fd = create_array(BPF_MAP_TYPE_ARRAY, args.slots * ncpu, BPF_F_MMAPABLE)
    copied_fd = create_array(BPF_MAP_TYPE_PERCPU_ARRAY, args.slots)
    mapped = FastFlows(mapped_fd, args.slots)
    copied = BpfMap(copied_fd, ctypes.c_uint32, FastFlowSlot, percpu=True)
    try:
        while len(mapped.placed) < args.placed:  # random keys; a taken slot is skipped
            key = os.urandom(40)
            if mapped.place(key):
                slot = FastFlowSlot.from_buffer_copy(key + bytes(SLOT_SIZE - 40))
                slot.used = 1
                copied.update(
                    ctypes.c_uint32(slot_of(key, args.slots - 1)), (FastFlowSlot * ncpu)(*[slot] * ncpu)
                )
        times: dict[str, list[float]] = {"in place (mapped array)": [], "copied whole (per-CPU array)": []}
        for _ in range(args.reads):
            t0 = time.perf_counter_ns()
            n_mapped = sum(1 for _ in mapped.raw_items())
            t1 = time.perf_counter_ns()
            n_copied = read_copied(copied, ncpu)
            t2 = time.perf_counter_ns()
            assert n_mapped == n_copied == args.placed, (n_mapped, n_copied)
            times["in place (mapped array)"].append((t1 - t0) / 1e3)
            times["copied whole (per-CPU array)"].append((t2 - t1) / 1e3)
        print(f"{args.slots} slots x {ncpu} CPUs, {args.placed} placed, {args.reads} reads each")
        for what, values in times.items():
            q1, med, q3 = statistics.quantiles(values, n=4)
            print(f"  {what:30s} median {med:9.1f} us  [{q1:.1f}, {q3:.1f}]")
    finally:
        mapped.close()
        os.close(mapped_fd)
        os.close(copied_fd)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
