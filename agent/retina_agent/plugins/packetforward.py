"""packetforward: packets and bytes into and out of the node, by direction.

Part of the TC data path (``bpf/datapath.c``) on the node's ports (physical NICs and the host
side of pod veths; configurable with ``plugins.packetforward.interfaces``). A packet from pod A
to pod B counts once as ingress (it entered the node from A) and once as egress (the node sent
it to B).
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable

from retina_agent.bpf.datapath import Feature
from retina_agent.bpf.maps import BpfMap
from retina_agent.bpf.spec import LoadedProgram
from retina_agent.metrics import add, retina_gauge
from retina_agent.plugins.base import TcPlugin

DIRECTIONS = ("ingress", "egress")


class PfValue(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class PacketForward(TcPlugin):
    name = "packetforward"

    def prepare(self) -> Feature:
        return Feature(self.name, maps=["pf_counts"])

    def start(self, loaded: LoadedProgram | None) -> None:
        super().start(loaded)
        assert loaded is not None
        self.counts = BpfMap(loaded.maps["pf_counts"], ctypes.c_uint32, PfValue, percpu=True)
        self.snapshot = {d: (0, 0) for d in DIRECTIONS}
        self.attach_tc()

    def harvest(self) -> None:
        snapshot = {}
        for i, direction in enumerate(DIRECTIONS):
            per_cpu = self.counts.lookup(ctypes.c_uint32(i)) or []
            snapshot[direction] = (sum(v.packets for v in per_cpu), sum(v.bytes for v in per_cpu))
        self.snapshot = snapshot

    def collect(self) -> Iterable:
        packets = retina_gauge("forward_count", "Packets forwarded by the node, by direction", ["direction"])
        octets = retina_gauge("forward_bytes", "Bytes forwarded by the node, by direction", ["direction"])
        for direction, (n, b) in self.snapshot.items():
            add(packets, [direction], n)
            add(octets, [direction], b)
        return [packets, octets]
