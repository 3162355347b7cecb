"""The flow harvester turns the kernel's cumulative per-CPU flow counters into deltas and prunes
idle flows. A flow that resumes between the harvest's batch read and the prune must keep its
packets: on a loaded node the harvest thread can be descheduled for seconds between the two."""

from __future__ import annotations

import struct
from collections.abc import Iterator

from retina_agent.bpf.maps import possible_cpus
from retina_agent.podlevel.flows import IDLE_HARVESTS_BEFORE_PRUNE, FlowHarvester

KEY = b"flow-a-to-b"


def _value(packets: int, octets: int) -> bytes:
    """Two u64 counters per CPU, all counted on CPU 0."""
    per_cpu = [struct.pack("=QQ", packets, octets)] + [struct.pack("=QQ", 0, 0)] * (possible_cpus() - 1)
    return b"".join(per_cpu)


class KernelFlows:
    """The kernel's flow map as the harvester sees it; ``during_read`` runs after the batch read,
    i.e. packets the kernel counts while the harvest works on what it read."""

    def __init__(self) -> None:
        self.entries: dict[bytes, bytes] = {}
        self.during_read = None

    def raw_items(self) -> Iterator[tuple[bytes, bytes]]:
        snapshot = list(self.entries.items())
        yield from snapshot
        if self.during_read is not None:
            self.during_read()
            self.during_read = None

    def lookup_raw(self, key: bytes) -> bytes | None:
        return self.entries.get(key)

    def delete_raw(self, key: bytes) -> bool:
        return self.entries.pop(key, None) is not None


def test_a_flow_resuming_while_it_is_pruned_keeps_its_packets() -> None:
    kernel = KernelFlows()
    counted: list[int] = []
    harvester = FlowHarvester(kernel, 2, lambda key, deltas: counted.append(deltas[0]))  # type: ignore[arg-type]
    kernel.entries[KEY] = _value(20, 2840)
    harvester.harvest()
    assert counted == [20]
    for _ in range(IDLE_HARVESTS_BEFORE_PRUNE - 1):  # idle, not yet old enough to prune
        harvester.harvest()
    # the harvest that prunes it: 20 more packets arrive after its read, before its delete
    kernel.during_read = lambda: kernel.entries.__setitem__(KEY, _value(40, 5680))
    harvester.harvest()
    harvester.harvest()
    assert sum(counted) == 40, "the resumed flow's packets were deleted with the idle entry"


def test_an_idle_flow_is_pruned_after_the_idle_harvests() -> None:
    kernel = KernelFlows()
    harvester = FlowHarvester(kernel, 2, lambda key, deltas: None)  # type: ignore[arg-type]
    kernel.entries[KEY] = _value(5, 710)
    for _ in range(IDLE_HARVESTS_BEFORE_PRUNE):
        harvester.harvest()
    assert KEY in kernel.entries and len(harvester) == 1
    harvester.harvest()
    assert KEY not in kernel.entries and len(harvester) == 0


def test_a_flow_is_remembered_in_the_same_few_bytes_on_any_number_of_cpus(monkeypatch) -> None:
    """What the harvester keeps per flow must not grow with the CPUs: the raw per-CPU value of
    packetparser is 6 KiB on a 64-CPU node (600 MiB for 100,000 flows); the record keeps the
    sums only. Counters spread over all CPUs are summed, deltas are per harvest."""
    import retina_agent.podlevel.flows as flows

    ncpu, words = 64, 12
    monkeypatch.setattr(flows, "possible_cpus", lambda: ncpu)
    kernel = KernelFlows()
    counted: list[list[int]] = []
    harvester = FlowHarvester(kernel, words, lambda key, deltas: counted.append(deltas))  # type: ignore[arg-type]

    def value(packets_per_cpu: int) -> bytes:
        per_cpu = [packets_per_cpu, 100 * packets_per_cpu] + [0] * (words - 3) + [packets_per_cpu]
        return struct.pack(f"={words * ncpu}Q", *(per_cpu * ncpu))

    kernel.entries[KEY] = value(1)
    harvester.harvest()
    kernel.entries[KEY] = value(3)
    harvester.harvest()
    harvester.harvest()  # unchanged: nothing to account
    assert counted == [
        [64, 6400] + [0] * (words - 3) + [64],
        [128, 12800] + [0] * (words - 3) + [128],
    ]
    assert len(harvester.last[KEY]) == 8 + 8 + 8 * words  # fingerprint, harvest number, sums
