"""BpfMap.raw_items reads per-CPU maps in batches, and the same bytes one key at a time where the
kernel has no batch operation for the map type (5.10 answers ENOTSUPP, 524, for per-CPU arrays:
dropreason's counts failed to start there until the fallback took that answer and gave per-CPU
values as bytes)."""

from __future__ import annotations

import ctypes
import os
import struct

from retina_agent.bpf import maps, syscall
from retina_agent.bpf.maps import ENOTSUPP, BpfMap, possible_cpus
from retina_agent.plugins.dropreason import DropValue

BPF_MAP_CREATE, BPF_MAP_TYPE_PERCPU_ARRAY = 0, 6


class WithoutBatch:
    """libbpf as an old kernel answers it: every batch lookup refused with ENOTSUPP."""

    def __init__(self, lib) -> None:
        self._lib = lib

    def __getattr__(self, name: str):
        return getattr(self._lib, name)

    def bpf_map_lookup_batch(self, *args) -> int:
        ctypes.set_errno(ENOTSUPP)
        return -ENOTSUPP


def test_per_cpu_array_reads_the_same_without_batch_operations(monkeypatch):
    slots = 8
    fd = syscall.bpf(BPF_MAP_CREATE, struct.pack("=IIII", BPF_MAP_TYPE_PERCPU_ARRAY, 4, 16, slots))
    try:
        table = BpfMap(fd, ctypes.c_uint32, DropValue, percpu=True)
        cpus = range(possible_cpus())
        for slot in (1, 5):
            per_cpu = b"".join(struct.pack("=QQ", slot * 10 + cpu, 100 * slot + cpu) for cpu in cpus)
            table.update_raw(struct.pack("=I", slot), per_cpu)
        batched = dict(table.raw_items())
        lib = maps._libbpf()
        monkeypatch.setattr(maps, "_libbpf", lambda: WithoutBatch(lib))
        one_by_one = dict(table.raw_items())
        assert one_by_one == batched
        assert len(one_by_one) == slots
        assert one_by_one[struct.pack("=I", 5)][:16] == struct.pack("=QQ", 50, 500)  # CPU 0's value
        assert one_by_one[struct.pack("=I", 2)] == bytes(16 * len(cpus))
    finally:
        os.close(fd)
