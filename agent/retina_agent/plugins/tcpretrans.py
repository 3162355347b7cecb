"""tcpretrans: TCP retransmissions from the tcp:tcp_retransmit_skb tracepoint.

Node level: ``tcpretrans_count{family}``. Pod level (``enablePodLevel``):
``adv_tcpretrans_count`` with the context labels of the pods the retransmitting connection
joins (the sender's egress series, the receiver's ingress series in local context).
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Iterable

from retina_agent.bpf.maps import BpfMap
from retina_agent.bpf.spec import LoadedProgram, ProgramSpec
from retina_agent.metrics import add, retina_gauge
from retina_agent.plugins.base import Plugin
from retina_agent.plugins.tracepoints import tracepoint_constants
from retina_agent.podlevel import addr_str
from retina_agent.podlevel.flows import FlowHarvester

FAMILIES = ("ipv4", "ipv6")
ADV = "adv_tcpretrans_count"


class PairKey(ctypes.Structure):
    _fields_ = [("src", ctypes.c_uint8 * 16), ("dst", ctypes.c_uint8 * 16)]


class TcpRetrans(Plugin):
    name = "tcpretrans"

    def prepare(self) -> ProgramSpec:
        tracepoint = self.ctx.config.plugins.tcpretrans.tracepoint
        pod_level = self.ctx.pod_level is not None
        fields = ("family", "saddr", "daddr", "saddr_v6", "daddr_v6") if pod_level else ("family",)
        constants, _ = tracepoint_constants(tracepoint, *fields)
        pod_constants, sizes = self.pod_level_settings(["retrans_pairs"])
        maps = ["retrans_counts"]
        if pod_level:
            maps += ["retrans_pairs", "ips_of_interest"]
        return ProgramSpec(
            plugin=self.name,
            obj="tcpretrans",
            constants=constants | pod_constants,
            max_entries=sizes,
            tracepoints=[(tracepoint, "on_tcp_retransmit_skb")],
            maps=maps,
        )

    def start(self, loaded: LoadedProgram | None) -> None:
        super().start(loaded)
        assert loaded is not None
        self.counts = BpfMap(loaded.maps["retrans_counts"], ctypes.c_uint32, ctypes.c_uint64, percpu=True)
        self.snapshot = dict.fromkeys(FAMILIES, 0)
        self.pairs: FlowHarvester | None = None
        if "retrans_pairs" in loaded.maps:
            self.use_pod_filter(loaded)
            self.pairs = FlowHarvester(
                BpfMap(loaded.maps["retrans_pairs"], PairKey, ctypes.c_uint64, percpu=True), 1, self._account
            )
            self.ctx.pod_level.register_metric(
                ADV, "TCP retransmissions of pod traffic by direction and context"
            )

    def harvest(self) -> None:
        self.snapshot = {f: sum(self.counts.lookup(ctypes.c_uint32(i)) or []) for i, f in enumerate(FAMILIES)}
        if self.pairs is not None:
            pod_level = self.ctx.pod_level
            self._plan, self._now = pod_level.plan(ADV), time.monotonic()
            self.pairs.harvest()
            pod_level.series.expire({ADV: pod_level.ttl(ADV)}, self._now)

    def _account(self, raw_key: bytes, deltas: list[int]) -> None:
        src_ip, dst_ip = addr_str(raw_key[:16]), addr_str(raw_key[16:32])
        pod_level = self.ctx.pod_level
        for labels in pod_level.label_sets(self._plan, src_ip, 0, dst_ip, 0):
            pod_level.series.add(ADV, labels, deltas[0], self._now)

    def collect(self) -> Iterable:
        family = retina_gauge(
            "tcpretrans_count", "TCP segments retransmitted by the node, by address family", ["family"]
        )
        for name, value in self.snapshot.items():
            add(family, [name], value)
        return [family]
