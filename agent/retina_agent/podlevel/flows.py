"""Turn a per-CPU flow map that only grows into per-interval deltas, cheaply.

Each harvest reads the map in batches, skips entries whose raw bytes did not change (the
common case, no unpacking), sums per-CPU counters of the changed ones, computes deltas against
the last harvest (a smaller value means the LRU evicted and re-created the entry), hands them
to ``account``, and deletes entries idle for a few harvests so the map and this table stay
small.

What is remembered of a flow between harvests is one packed record (see ``FlowRecord``), not
the raw per-CPU value: the record is 8 + 8 + 8 x words bytes on any node, while the raw value
is ncpu x 8 x words bytes (192 bytes for packetparser on 2 CPUs, 6 KiB on 64), which with
100,000 flows is the difference between 15 MiB and 600 MiB.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from retina_agent.bpf.maps import possible_cpus
from retina_agent.podlevel import addr_bytes

if TYPE_CHECKING:
    from retina_agent.podlevel import PodLevel

IDLE_HARVESTS_BEFORE_PRUNE = 6


def per_cpu_sums(words: int) -> Callable[[bytes], list[int]]:
    """A per-CPU map value's bytes (``words`` u64 counters per possible CPU) -> each counter
    summed over the CPUs."""
    unpack = struct.Struct(f"={words * possible_cpus()}Q").unpack

    def sums(raw_value: bytes) -> list[int]:
        values = unpack(raw_value)
        return [sum(values[i::words]) for i in range(words)]

    return sums


class FlowRecord:
    """A flow as the last harvest left it, packed in one ``bytes``.

    * ``fingerprint``: the ``hash()`` of the raw per-CPU value. An unchanged value has the same
      hash, so the common unchanged flow costs one hash and no unpacking. A changed value with
      the same 64-bit hash (a 2**-64 chance per read) postpones its packets to the flow's next
      change, or loses them if the flow then stays idle until it is pruned.
    * ``changed``: the number of the harvest that last saw the value change.
    * ``sums``: the counters summed over CPUs then (deltas are taken against them).
    """

    def __init__(self, words: int) -> None:
        self._struct = struct.Struct(f"=qQ{words}Q")
        self._head = struct.Struct("=qQ")

    def pack(self, fingerprint: int, changed: int, sums: list[int]) -> bytes:
        return self._struct.pack(fingerprint, changed, *sums)

    def head(self, record: bytes) -> tuple[int, int]:
        """``(fingerprint, changed)`` without unpacking the sums."""
        return self._head.unpack_from(record)

    def sums(self, record: bytes) -> tuple[int, ...]:
        return self._struct.unpack(record)[2:]


class FlowTable(Protocol):
    """What a harvester reads: a per-CPU flow map (``BpfMap``), or the fast flow table."""

    def raw_items(self) -> Iterator[tuple[bytes, bytes]]: ...
    def lookup_raw(self, key: bytes) -> bytes | None: ...
    def delete_raw(self, key: bytes) -> bool: ...


class FlowHarvester:
    def __init__(self, bpf_map: FlowTable, words: int, account: Callable[[bytes, list[int]], None]) -> None:
        """``words``: u64 counters in one CPU's value; ``account(raw_key, deltas)``."""
        self.map = bpf_map
        self.words = words
        self.account = account
        self.ncpu = possible_cpus()
        self.sums = per_cpu_sums(words)
        self.record = FlowRecord(words)
        self.harvests = 0  # harvests done: the clock of ``changed`` in the records
        # raw key -> packed FlowRecord
        self.last: dict[bytes, bytes] = {}

    def harvest(self) -> None:
        self.harvests += 1
        now, record, last = self.harvests, self.record, self.last
        seen: set[bytes] = set()
        prune: list[bytes] = []
        for raw_key, raw_value in self.map.raw_items():
            seen.add(raw_key)
            fingerprint = hash(raw_value)
            previous = last.get(raw_key)
            if previous is not None:
                known, changed = record.head(previous)
                if known == fingerprint:
                    if now - changed >= IDLE_HARVESTS_BEFORE_PRUNE:
                        prune.append(raw_key)
                    continue
            sums = self.sums(raw_value)
            before = record.sums(previous) if previous is not None else None
            if before is None or sums[0] < before[0]:
                deltas = sums
            else:
                deltas = [c - p for c, p in zip(sums, before, strict=True)]
            last[raw_key] = record.pack(fingerprint, now, sums)
            self.account(raw_key, deltas)
        for key in prune:
            # The batch read above may be long past (a loaded node deschedules this thread): a
            # flow that resumed since would lose its new packets with the entry. Read it again
            # right before deleting; if it moved, keep it and let the next harvest count it.
            current = self.map.lookup_raw(key)
            if current is None or hash(current) != record.head(last[key])[0]:
                continue
            self.map.delete_raw(key)
            last.pop(key, None)
        if len(seen) != len(last):
            for key in [k for k in last if k not in seen]:  # evicted by the LRU
                del last[key]

    def drop(self, doomed: Callable[[bytes], bool]) -> int:
        """Delete the flows (seen at the last harvest) whose raw key ``doomed`` picks; how many."""
        keys = [k for k in self.last if doomed(k)]
        for key in keys:
            self.map.delete_raw(key)
            del self.last[key]
        return len(keys)

    def __len__(self) -> int:
        return len(self.last)

    def __contains__(self, raw_key: bytes) -> bool:
        """Was the flow there at the last harvest (and not deleted since)?"""
        return raw_key in self.last


class DeselectedFlows:
    """Deletes the flows of a flow map (keys starting with the 16-byte source and destination
    addresses) that touch no IP of interest any more: pods that left the selection. For kernel
    sides that check the filter only when they create a flow (a known flow costs one lookup).

    ``PodLevel.interest_now`` changes a moment before the filter maps do, so a flow created in
    between passed the old filter: after IPs leave, flows are checked at that harvest and again
    at the next one."""

    def __init__(
        self, harvester: FlowHarvester, pod_level: PodLevel, filtered: Callable[[], bool] = lambda: True
    ) -> None:
        """``filtered``: whether the kernel side filters by IPs of interest now (packetparser does
        not with ``bypassLookupIPOfInterest``: every flow is counted, none is deselected)."""
        self.harvester = harvester
        self.pod_level = pod_level
        self.filtered = filtered
        self._interest = pod_level.interest_now  # as of the last call
        self._again = False

    def prune(self) -> int:
        """Call after ``harvester.harvest()`` (the flows it saw are the ones checked); how many went."""
        interest = self.pod_level.interest_now
        left = interest is not self._interest and self.filtered() and bool(self._interest - interest)
        self._interest = interest
        if not (left or self._again):
            return 0
        self._again = left
        keys = {addr_bytes(ip) for ip in interest}
        return self.harvester.drop(lambda raw: raw[:16] not in keys and raw[16:32] not in keys)
