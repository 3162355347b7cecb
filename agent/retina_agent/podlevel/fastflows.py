"""The fast flow table: busy flows counted in a per-CPU array slot, not in the LRU hash.

In ``datapath.c``, a packet's flow is first looked for in ``fast_flows``, a per-CPU array
indexed by a hash of the flow key (the verifier inlines that lookup: a bounds check and a
load), and only then in ``flows``, the per-CPU LRU hash (a call that hashes the 40-byte key and
walks a bucket). The kernel only compares keys and counts there; the agent places and frees:

* place: after a harvest, a flow of ``flows`` that counted at least ``PLACE_MIN_PACKETS``
  packets since the last one gets its slot if that slot is free: its key, zero counters and
  ``used`` are written on every CPU. From then on its packets count in the slot.
* free: a slot whose counters have not moved for ``IDLE_HARVESTS_BEFORE_PRUNE`` harvests is
  zeroed, as an idle ``flows`` entry is deleted (``FlowHarvester`` does both, through
  ``delete_raw``), and so is the slot of a flow whose pods left the selection.

A flow is counted in ``flows`` until it has a slot and in its slot after. ``FastFlows`` offers
the slots through the calls ``FlowHarvester`` reads a map with (``raw_items``, ``lookup_raw``,
``delete_raw``), so one harvester per table turns each into deltas of the same flow key, and
their sum is the flow's count.

The agent writes a slot while it is free (the kernel does not count in it; ``used``, the
slot's last word, is written last, so a packet matches the slot only once the whole key is
there), or to free it: after it was idle for a while and read once more just before, as an idle
``flows`` entry is deleted (a packet in the microseconds between that read and the write would be
lost, the same window as there). The kernel never writes a slot's key: it cannot claim or evict
a slot while the agent reads it, and a flow cannot lose the counts since the last harvest to an
eviction.
"""

from __future__ import annotations

import ctypes
import struct
import sys
from collections.abc import Iterator

from retina_agent.bpf.maps import BpfMap, possible_cpus

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


def slot_type(key_size: int, words: int) -> type[ctypes.Structure]:
    """``struct fast_flow``: the key, the counters, pad, used."""
    return type(
        "FastFlow",
        (ctypes.Structure,),
        {
            "_fields_": [
                ("key", ctypes.c_uint8 * key_size),
                ("counters", ctypes.c_uint64 * words),
                ("pad", ctypes.c_uint32),
                ("used", ctypes.c_uint32),
            ]
        },
    )


class FastFlows:
    """The ``fast_flows`` map as FlowHarvester reads a flow map, plus ``place``."""

    def __init__(self, fd: int, slots: int, key_size: int, words: int) -> None:
        if slots < 1 or slots & (slots - 1):
            raise ValueError(f"fast flow slots must be a power of two, not {slots}")
        self.mask = slots - 1
        self.key_size = key_size
        self.words = words
        slot = slot_type(key_size, words)
        self.map = BpfMap(fd, ctypes.c_uint32, slot, percpu=True)
        self.ncpu = possible_cpus()
        self.slot_size = ctypes.sizeof(slot)
        self._used = slice(self.slot_size - 4, self.slot_size)
        self._zero = bytes(self.slot_size * self.ncpu)
        self.placed: dict[bytes, int] = {}  # key -> slot, as of the last read and since
        self.free: set[int] = set(range(slots))

    def _index(self, slot: int) -> bytes:
        return slot.to_bytes(4, sys.byteorder)

    def _per_cpu_counters(self, raw: bytes) -> bytes:
        """All CPUs' counters of a slot, laid out as a ``flows`` value (for ``per_cpu_sums``)."""
        size, start, stop = self.slot_size, self.key_size, self.key_size + 8 * self.words
        return b"".join(raw[c * size + start : c * size + stop] for c in range(self.ncpu))

    def _placed_key(self, raw: bytes) -> bytes | None:
        # every CPU's copy has the key and ``used`` the agent wrote: CPU 0's says it for all
        if raw[self._used] == b"\0\0\0\0":
            return None
        return raw[: self.key_size]

    def raw_items(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, per-CPU counters) of every placed slot; also notes which slots are free."""
        placed: dict[bytes, int] = {}
        free: set[int] = set()
        for raw_index, raw in self.map.raw_items():
            slot = int.from_bytes(raw_index, sys.byteorder)
            key = self._placed_key(raw)
            if key is None:
                free.add(slot)
                continue
            placed[key] = slot
            yield key, self._per_cpu_counters(raw)
        self.placed, self.free = placed, free

    def lookup_raw(self, key: bytes) -> bytes | None:
        slot = self.placed.get(key)
        if slot is None:
            return None
        raw = self.map.lookup_raw(self._index(slot))
        if raw is None or self._placed_key(raw) != key:
            return None
        return self._per_cpu_counters(raw)

    def delete_raw(self, key: bytes) -> bool:
        """Free the flow's slot (zero on every CPU)."""
        slot = self.placed.pop(key, None)
        if slot is None:
            return False
        self.map.update_raw(self._index(slot), self._zero)
        self.free.add(slot)
        return True

    def place(self, key: bytes) -> bool:
        """Give ``key`` its slot if that slot is free; whether it did."""
        slot = slot_of(key, self.mask)
        if slot not in self.free or key in self.placed:
            return False
        one = key + bytes(8 * self.words) + struct.pack("=II", 0, 1)
        self.map.update_raw(self._index(slot), one * self.ncpu)
        self.free.discard(slot)
        self.placed[key] = slot
        return True
