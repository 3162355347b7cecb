"""packetparser: pod-level flows at TC on every pod's veth (Retina's advanced metrics).

The kernel aggregates packets, bytes and TCP flags per flow key in a per-CPU LRU hash; only
flows touching an IP of interest are counted (the filter map is kept by ``PodLevel``). Every
interval the agent reads the map in batches, turns per-flow deltas into series with the
context labels of the MetricsConfiguration in force, and removes flows idle for a while.

Metrics: ``adv_forward_count``, ``adv_forward_bytes`` (direction + context) and
``adv_tcpflags_count`` (flag + context).
"""

from __future__ import annotations

import ctypes
import struct
import time
from collections.abc import Iterable

from retina_agent.bpf.maps import BpfMap
from retina_agent.bpf.spec import LoadedProgram, ProgramSpec
from retina_agent.links import LinkSelector
from retina_agent.plugins.base import Plugin, PluginUnavailable, bpf_source
from retina_agent.podlevel import AddrKey, addr_str
from retina_agent.podlevel.context import DIRECTIONS
from retina_agent.podlevel.flows import FlowHarvester
from retina_agent.tc import PRIO_BASE, TcProgram

FLAGS = ("FIN", "SYN", "SYNACK", "ACK", "RST", "PSH", "URG", "ECE", "CWR", "NS")
TC_PRIO = PRIO_BASE + 0x20
FORWARD_COUNT, FORWARD_BYTES, TCPFLAGS = "adv_forward_count", "adv_forward_bytes", \
    "adv_tcpflags_count"
METRICS = (FORWARD_COUNT, FORWARD_BYTES, TCPFLAGS)

class FlowKey(ctypes.Structure):
    _fields_ = [("src", ctypes.c_uint8 * 16), ("dst", ctypes.c_uint8 * 16),
                ("sport", ctypes.c_uint16), ("dport", ctypes.c_uint16),
                ("proto", ctypes.c_uint8), ("direction", ctypes.c_uint8),
                ("pad", ctypes.c_uint16)]

class FlowValue(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64),
                ("flags", ctypes.c_uint64 * len(FLAGS))]

class Settings(ctypes.Structure):
    _fields_ = [("filter_enabled", ctypes.c_uint32), ("pad", ctypes.c_uint32)]

_KEY = struct.Struct("=16s16sHHBBH")
_VALUE_WORDS = 2 + len(FLAGS)

class PacketParser(Plugin):
    name = "packetparser"

    def prepare(self) -> ProgramSpec:
        cfg = self.ctx.config
        if not cfg.enable_pod_level or self.ctx.pod_level is None:
            raise PluginUnavailable("packetparser produces pod-level metrics: set "
                                    "enablePodLevel: true")
        options = cfg.plugins.packetparser
        return ProgramSpec(plugin=self.name, source=bpf_source("packetparser.c"),
                           cflags=[f"-DMAX_FLOWS={options.max_flows}",
                                   f"-DMAX_IPS={options.max_ips}"],
                           sched_cls=["pp_ingress", "pp_egress"],
                           maps=["flows", "ips_of_interest", "settings_map"])

    def start(self, loaded: LoadedProgram | None) -> None:
        super().start(loaded)
        assert loaded is not None
        pod_level = self.ctx.pod_level
        self.flows = BpfMap(loaded.maps["flows"], FlowKey, FlowValue, percpu=True)
        settings = BpfMap(loaded.maps["settings_map"], ctypes.c_uint32, Settings)
        settings.update(ctypes.c_uint32(0),
                        Settings(filter_enabled=0 if pod_level.bypass_filter else 1))
        pod_level.register_filter(BpfMap(loaded.maps["ips_of_interest"], AddrKey,
                                         ctypes.c_uint8))
        self.harvester = FlowHarvester(self.flows, 2 + len(FLAGS), self._account)
        pod_level.register_metric(FORWARD_COUNT, "Packets of pod traffic by direction and context")
        pod_level.register_metric(FORWARD_BYTES, "Bytes of pod traffic by direction and context")
        pod_level.register_metric(TCPFLAGS, "TCP packets of pod traffic by flag and context",
                                  ("flag",))
        selector = LinkSelector(self.ctx.config.plugins.packetparser.interfaces)
        for i, direction in enumerate(("ingress", "egress")):
            self.ctx.tc.add_program(TcProgram(
                name=f"retina_pp_{direction}", fd=loaded.programs[f"pp_{direction}"],
                direction=direction, prio=TC_PRIO + i, selector=selector))

    def harvest(self) -> None:
        pod_level = self.ctx.pod_level
        self._plans = {m: pod_level.plan(m) for m in METRICS}
        self._now = time.monotonic()
        self.harvester.harvest()
        pod_level.series.expire({m: pod_level.ttl(m) for m in METRICS}, self._now)

    def _account(self, raw_key: bytes, deltas: list[int]) -> None:
        plans, series, now = self._plans, self.ctx.pod_level.series, self._now
        src_raw, dst_raw, sport, dport, _proto, direction_index, _ = _KEY.unpack(raw_key)
        src_ip, dst_ip = addr_str(src_raw), addr_str(dst_raw)
        direction = DIRECTIONS[direction_index] if direction_index < 2 else None
        packets, octets, flags = deltas[0], deltas[1], deltas[2:]
        label_sets = self.ctx.pod_level.label_sets
        for labels in label_sets(plans[FORWARD_COUNT], src_ip, sport, dst_ip, dport, direction):
            series.add(FORWARD_COUNT, labels, packets, now)
        for labels in label_sets(plans[FORWARD_BYTES], src_ip, sport, dst_ip, dport, direction):
            series.add(FORWARD_BYTES, labels, octets, now)
        if any(flags):
            for labels in label_sets(plans[TCPFLAGS], src_ip, sport, dst_ip, dport, direction):
                for flag, n in zip(FLAGS, flags, strict=True):
                    if n:
                        series.add(TCPFLAGS, (flag, *labels), n, now)

    def collect(self) -> Iterable:
        return []  # pod-level series are rendered by PodLevel
