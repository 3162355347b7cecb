"""packetparser: pod-level flows at TC on every pod's veth (Retina's advanced metrics).

The kernel aggregates packets, bytes and TCP flags per flow key in a per-CPU LRU hash; only
flows touching an IP of interest are counted (the filter map is kept by ``PodLevel``). The
kernel checks the filter on a flow's first packet only (a known flow costs one lookup, not
three), so when IPs leave the selection the agent deletes the flows that touch none of the
remaining ones. Every interval the agent reads the map in batches, turns per-flow deltas into
series with the context labels of the MetricsConfiguration in force, and removes flows idle
for a while. Busy flows then move to the fast flow table (``podlevel/fastflows.py``): a
per-CPU array slot the kernel finds without a hash-map lookup; the agent adds both tables.

Metrics: ``adv_forward_count``, ``adv_forward_bytes`` (direction + context) and
``adv_tcpflags_count`` (flag + context).
"""

from __future__ import annotations

import ctypes
import logging
import struct
import time
from collections.abc import Iterable

from retina_agent.bpf.datapath import N_TCP_FLAGS, Feature
from retina_agent.bpf.maps import BpfMap
from retina_agent.bpf.spec import LoadedProgram
from retina_agent.plugins.base import PluginUnavailable, TcPlugin
from retina_agent.podlevel import addr_str
from retina_agent.podlevel.context import DIRECTIONS
from retina_agent.podlevel.fastflows import (
    COUNTER_WORDS,
    PLACE_MIN_PACKETS,
    FastFlows,
    fast_flow_constants,
    fast_flow_entries,
)
from retina_agent.podlevel.flows import DeselectedFlows, FlowHarvester

FLAGS = ("FIN", "SYN", "SYNACK", "ACK", "RST", "PSH", "URG", "ECE", "CWR", "NS")
assert len(FLAGS) == N_TCP_FLAGS
FORWARD_COUNT, FORWARD_BYTES, TCPFLAGS = "adv_forward_count", "adv_forward_bytes", "adv_tcpflags_count"
METRICS = (FORWARD_COUNT, FORWARD_BYTES, TCPFLAGS)
log = logging.getLogger(__name__)


class FlowKey(ctypes.Structure):
    _fields_ = [
        ("src", ctypes.c_uint8 * 16),
        ("dst", ctypes.c_uint8 * 16),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("pad", ctypes.c_uint16),
    ]


class FlowValue(ctypes.Structure):
    _fields_ = [
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("flags", ctypes.c_uint64 * len(FLAGS)),
    ]


_KEY = struct.Struct("=16s16sHHBBH")


class PacketParser(TcPlugin):
    name = "packetparser"

    def prepare(self) -> Feature:
        cfg = self.ctx.config
        if not cfg.enable_pod_level or self.ctx.pod_level is None:
            raise PluginUnavailable("packetparser produces pod-level metrics: set enablePodLevel: true")
        options = cfg.plugins.packetparser
        constants, sizes = self.pod_level_settings([])
        slots = options.fast_flows
        constants |= fast_flow_constants(slots)
        return Feature(
            self.name,
            maps=["flows", "fast_flows", "ips_of_interest"],
            constants=constants,
            max_entries=sizes | {"flows": options.max_flows, "fast_flows": fast_flow_entries(slots)},
        )

    def start(self, loaded: LoadedProgram | None) -> None:
        super().start(loaded)
        assert loaded is not None
        pod_level = self.ctx.pod_level
        self.flows = BpfMap(loaded.maps["flows"], FlowKey, FlowValue, percpu=True)
        self.ctx.datapath.set_filter(not pod_level.bypass_filter)
        self.use_pod_filter(loaded)
        self.harvester = FlowHarvester(self.flows, COUNTER_WORDS, self._account_and_note_busy)
        self._busy: list[bytes] = []
        slots = self.ctx.config.plugins.packetparser.fast_flows
        self.fast: FastFlows | None = None
        self.fast_harvester: FlowHarvester | None = None
        if slots:
            self.fast = FastFlows(loaded.maps["fast_flows"], slots)
            self.fast_harvester = FlowHarvester(self.fast, COUNTER_WORDS, self._account)

        # the kernel checks the filter only when it creates a flow: flows of pods that leave
        # the selection are deleted here
        def filtered() -> bool:
            return not pod_level.bypass_filter

        self.deselected = [DeselectedFlows(self.harvester, pod_level, filtered)]
        if self.fast_harvester is not None:
            self.deselected.append(DeselectedFlows(self.fast_harvester, pod_level, filtered))
        pod_level.register_metric(FORWARD_COUNT, "Packets of pod traffic by direction and context")
        pod_level.register_metric(FORWARD_BYTES, "Bytes of pod traffic by direction and context")
        pod_level.register_metric(TCPFLAGS, "TCP packets of pod traffic by flag and context", ("flag",))
        self.attach_tc()

    def stop(self) -> None:
        super().stop()
        fast = getattr(self, "fast", None)  # None also when start failed before it
        if fast is not None:
            fast.close()  # the table's mapping holds its memory until unmapped
            self.fast = None
            self.fast_harvester = None

    def harvest(self) -> None:
        pod_level = self.ctx.pod_level
        self._plans = {m: pod_level.plan(m) for m in METRICS}
        self._now = time.monotonic()
        self._busy.clear()
        if self.fast_harvester is not None:
            self.fast_harvester.harvest()
        self.harvester.harvest()
        n = sum(d.prune() for d in self.deselected)
        if n:
            log.debug("removed %d flows of pods that left the selection", n)
        if self.fast is not None:
            for key in self._busy:
                if key in self.harvester:  # not just removed as deselected
                    self.fast.place(key)
        pod_level.series.expire({m: pod_level.ttl(m) for m in METRICS}, self._now)

    def _account_and_note_busy(self, raw_key: bytes, deltas: list[int]) -> None:
        """A ``flows`` entry's deltas; a busy one is noted for a fast slot."""
        if deltas[0] >= PLACE_MIN_PACKETS:
            self._busy.append(raw_key)
        self._account(raw_key, deltas)

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
