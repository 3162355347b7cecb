"""tcpretrans: TCP retransmissions on the node, from the tcp:tcp_retransmit_skb tracepoint."""

from __future__ import annotations

import ctypes
from collections.abc import Iterable

from retina_agent.bpf.maps import BpfMap
from retina_agent.bpf.spec import LoadedProgram, ProgramSpec
from retina_agent.metrics import add, retina_gauge
from retina_agent.plugins.base import Plugin
from retina_agent.plugins.tracepoints import tracepoint_source

FAMILIES = ("ipv4", "ipv6")


class TcpRetrans(Plugin):
    name = "tcpretrans"

    def prepare(self) -> ProgramSpec:
        tracepoint = self.ctx.config.plugins.tcpretrans.tracepoint
        source, _ = tracepoint_source("tcpretrans.c", tracepoint, "family")
        return ProgramSpec(plugin=self.name, source=source,
                           tracepoints=[(tracepoint, "on_tcp_retransmit_skb")],
                           maps=["retrans_counts"])

    def start(self, loaded: LoadedProgram | None) -> None:
        super().start(loaded)
        assert loaded is not None
        self.counts = BpfMap(loaded.maps["retrans_counts"], ctypes.c_uint32, ctypes.c_uint64,
                             percpu=True)
        self.snapshot = dict.fromkeys(FAMILIES, 0)

    def harvest(self) -> None:
        self.snapshot = {f: sum(self.counts.lookup(ctypes.c_uint32(i)) or [])
                         for i, f in enumerate(FAMILIES)}

    def collect(self) -> Iterable:
        family = retina_gauge("tcpretrans_count",
                              "TCP segments retransmitted by the node, by address family",
                              ["family"])
        for name, value in self.snapshot.items():
            add(family, [name], value)
        return [family]
