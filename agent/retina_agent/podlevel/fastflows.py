"""The fast flow table: busy flows counted in an array slot, not in the LRU hash.

In ``datapath.c``, a packet's flow is first looked for in ``fast_flows``, an array indexed by a
hash of the flow key (the verifier inlines that lookup: a bounds check and a multiply), and
only then in ``flows``, the per-CPU LRU hash (a call that hashes the 40-byte key and walks a
bucket). The kernel only compares keys and counts there; the agent places and frees:

* place: after a harvest, a flow of ``flows`` that counted at least ``PLACE_MIN_PACKETS``
  packets since the last one gets its slot if that slot is free: its key, then ``used``, are
  written in every CPU's copy. From then on its packets count in the slot.
* free: a slot whose counters have not moved for ``IDLE_HARVESTS_BEFORE_PRUNE`` harvests is
  freed (``used`` 0, then the rest zeroed), as an idle ``flows`` entry is deleted
  (``FlowHarvester`` does both, through ``delete_raw``), and so is the slot of a flow whose pods
  left the selection.

A flow is counted in ``flows`` until it has a slot and in its slot after. ``FastFlows`` offers
the slots through the calls ``FlowHarvester`` reads a map with (``raw_items``, ``lookup_raw``,
``delete_raw``), so one harvester per table turns each into deltas of the same flow key, and
their sum is the flow's count.

The table's memory (``SlotMemory``): each CPU has its own run of ``slots`` slots in one plain
array (index ``cpu * slots + slot``, 144 bytes each). The agent maps the array
(``BPF_F_MMAPABLE``) and reads and writes it in place: a harvest reads only the placed slots,
without a system call (a per-CPU array had to be copied whole, every slot of every CPU:
1.2-1.4 ms per harvest at the default size on 2 CPUs, 21-23 us now, as
bench/fast_table_harvest.py measures), and a slot is written field by field in the order the
kernel needs. It is written while free (the kernel does not count in it: the key
first, ``used`` last, so a packet matches the slot only once its key is whole), or to free it:
``used`` 0 first. A slot is freed after it was idle for a while and read once more just before,
as an idle ``flows`` entry is deleted (a packet in the microseconds between that read and the
write would be lost, the same window as there). The kernel never writes a slot's key: it cannot
claim or evict a slot while the agent reads it, and a flow cannot lose the counts since the
last harvest to an eviction.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from collections.abc import Iterator

from retina_agent.bpf.datapath import N_TCP_FLAGS
from retina_agent.bpf.maps import MapLayoutError, possible_cpus
from retina_agent.bpf.syscall import map_info

#: u64 counters of a flow: packets, bytes and the TCP flags (a ``flows`` value's layout).
COUNTER_WORDS = 2 + N_TCP_FLAGS


class FastFlowSlot(ctypes.Structure):
    """``struct fast_flow`` in datapath.c: one slot of one CPU."""

    _fields_ = [
        ("key", ctypes.c_uint8 * 40),
        ("used", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("counters", ctypes.c_uint64 * COUNTER_WORDS),
    ]


SLOT_SIZE = ctypes.sizeof(FastFlowSlot)
KEY_SIZE = FastFlowSlot.key.size
USED_OFFSET = FastFlowSlot.used.offset
COUNTERS_OFFSET = FastFlowSlot.counters.offset

# A flow counted this many packets in one harvest interval is busy enough for a slot: a short
# exchange (one DNS query, a health check) stays in ``flows`` and does not hold a slot for the
# six idle harvests before it is freed.
PLACE_MIN_PACKETS = 16

_GOLDEN = 0x9E3779B97F4A7C15
_U64 = (1 << 64) - 1


def slot_of(raw_key: bytes, mask: int) -> int:
    """The slot of a 40-byte flow key: datapath.c's ``fast_flow_slot``, the same arithmetic
    (a multiply-xor over the key's five native-endian 64-bit words, the top bits kept)."""
    words = struct.unpack("=5Q", raw_key)
    h = (words[0] * _GOLDEN) & _U64
    for w in words[1:]:
        h = ((h ^ w) * _GOLDEN) & _U64
    return (h >> 40) & mask


def fast_flow_constants(slots: int) -> dict[str, int]:
    """datapath.c's constants for a table of ``slots`` slots per CPU (0: off)."""
    return {
        "fast_flows_on": 1 if slots else 0,
        "fast_flow_mask": max(slots - 1, 0),
        "fast_flow_bits": max(slots.bit_length() - 1, 0),
    }


def fast_flow_entries(slots: int) -> int:
    """The ``fast_flows`` array's size: ``slots`` for every possible CPU (one entry when off)."""
    return slots * possible_cpus() if slots else 1


class SlotMemory:
    """The ``fast_flows`` array, mapped: slot ``s`` of CPU ``c`` is entry ``c * slots + s``.

    The agent's ``FastFlows`` reads and writes it through this; so does
    ``bench/datapath_variants.py``, on tables it loads itself."""

    def __init__(self, fd: int, slots: int) -> None:
        if slots < 1 or slots & (slots - 1):
            raise ValueError(f"fast flow slots must be a power of two, not {slots}")
        self.slots = slots
        self.ncpu = possible_cpus()
        info = map_info(fd)
        if info.value_size != SLOT_SIZE or info.max_entries != slots * self.ncpu:
            raise MapLayoutError(
                f"BPF map {info.name}: {info.max_entries} entries of {info.value_size} bytes, not "
                f"{slots * self.ncpu} of {SLOT_SIZE}: datapath.c's struct fast_flow and "
                "fastflows.py disagree"
            )
        length = -(-slots * self.ncpu * SLOT_SIZE // mmap.PAGESIZE) * mmap.PAGESIZE
        self._mem = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._bytes = memoryview(self._mem)
        self._u32 = self._bytes.cast("I")  # ``used``: one aligned 32-bit store

    def close(self) -> None:
        self._u32.release()
        self._bytes.release()
        self._mem.close()

    def _offsets(self, slot: int) -> range:
        """Where each CPU's copy of ``slot`` starts."""
        step = self.slots * SLOT_SIZE
        return range(slot * SLOT_SIZE, self.ncpu * step, step)

    def key(self, slot: int) -> bytes | None:
        """The key placed in ``slot`` (CPU 0's copy: the agent writes every CPU's alike), or
        None while it is free."""
        if not self._u32[USED_OFFSET // 4 + slot * SLOT_SIZE // 4]:
            return None
        return bytes(self._bytes[slot * SLOT_SIZE : slot * SLOT_SIZE + KEY_SIZE])

    def counters(self, slot: int) -> bytes:
        """Every CPU's counters of ``slot``, laid out as a per-CPU ``flows`` value."""
        start, stop = COUNTERS_OFFSET, COUNTERS_OFFSET + 8 * COUNTER_WORDS
        return b"".join(self._bytes[o + start : o + stop] for o in self._offsets(slot))

    def write(self, slot: int, key: bytes) -> None:
        """Put ``key`` in a free ``slot`` of every CPU: zero counters and the key first, ``used``
        last. x86-64 makes stores visible in program order, so a packet that sees ``used`` sees
        the whole key. (A weakly ordered CPU, arm64, may show ``used`` first for nanoseconds: a
        packet then compares its key with one half written over zeros, a key no real flow has
        unless the missing words of its own are zero too.)"""
        zero = bytes(SLOT_SIZE - COUNTERS_OFFSET)
        for o in self._offsets(slot):
            self._bytes[o + COUNTERS_OFFSET : o + SLOT_SIZE] = zero
            self._bytes[o : o + KEY_SIZE] = key
        for o in self._offsets(slot):
            self._u32[(o + USED_OFFSET) // 4] = 1

    def clear(self, slot: int) -> None:
        """Free ``slot`` on every CPU: ``used`` 0 first (the kernel stops counting there), then
        the key and counters zeroed."""
        for o in self._offsets(slot):
            self._u32[(o + USED_OFFSET) // 4] = 0
        zero = bytes(SLOT_SIZE)
        for o in self._offsets(slot):
            self._bytes[o : o + SLOT_SIZE] = zero


class FastFlows:
    """The ``fast_flows`` map as FlowHarvester reads a flow map, plus ``place``."""

    def __init__(self, fd: int, slots: int) -> None:
        self.memory = SlotMemory(fd, slots)
        self.mask = slots - 1
        self.placed: dict[bytes, int] = {}  # key -> slot: only the agent places, so this is the table
        self.free: set[int] = set(range(slots))

    def close(self) -> None:
        self.memory.close()

    def raw_items(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, per-CPU counters) of every placed slot."""
        for key, slot in list(self.placed.items()):
            yield key, self.memory.counters(slot)

    def lookup_raw(self, key: bytes) -> bytes | None:
        slot = self.placed.get(key)
        if slot is None:
            return None
        return self.memory.counters(slot)

    def delete_raw(self, key: bytes) -> bool:
        """Free the flow's slot (on every CPU)."""
        slot = self.placed.pop(key, None)
        if slot is None:
            return False
        self.memory.clear(slot)
        self.free.add(slot)
        return True

    def place(self, key: bytes) -> bool:
        """Give ``key`` its slot if that slot is free; whether it did."""
        slot = slot_of(key, self.mask)
        if slot not in self.free or key in self.placed:
            return False
        self.memory.write(slot, key)
        self.free.discard(slot)
        self.placed[key] = slot
        return True
