"""dropreason: packets the kernel drops, by its own drop reason, from skb:kfree_skb.

Reason names come from the running kernel (the tracepoint's ``print fmt`` table, else the
``skb_drop_reason`` enum in BTF), never from a table compiled in: the numbers change between
kernels. Bytes need ``sk_buff.len``, whose offset is read from BTF. Kernels before 5.17 have no
``reason`` field: every drop is then counted under ``UNKNOWN`` (and the log says so).

At pod level the drops of flows touching an IP of interest are also counted per flow
(``adv_drop_*``). As in packetparser, the kernel checks the IPs of interest on a flow's first
drop only (a known flow costs one lookup), so when pods leave the selection the agent deletes
their flows (``DeselectedFlows``).
"""

from __future__ import annotations

import ctypes
import logging
import struct
import time
from collections.abc import Iterable

from retina_agent.bpf.maps import BpfMap
from retina_agent.bpf.spec import LoadedProgram, ProgramSpec
from retina_agent.metrics import add, retina_gauge
from retina_agent.plugins.base import Plugin, PluginUnavailable
from retina_agent.plugins.tracepoints import tracepoint_constants
from retina_agent.podlevel import addr_str
from retina_agent.podlevel.flows import DeselectedFlows, FlowHarvester, per_cpu_sums

log = logging.getLogger(__name__)

NO_REASON = 0xFFFFFFFF
ADV_COUNT, ADV_BYTES = "adv_drop_count", "adv_drop_bytes"
ADV_METRICS = (ADV_COUNT, ADV_BYTES)
_FLOW_KEY = struct.Struct("=16s16sIB")
_SLOT = struct.Struct("=I")
#: drop_table's reasons (dropreason.c): the kernel's table up to its highest reason, this many
#: at most (a table of SKB_DROP_REASON_* has ~130); without a table (names from BTF) the
#: default. Reasons past the table are counted in the hash drop_counts.
REASON_SLOTS_MAX, REASON_SLOTS_DEFAULT = 512, 256


DIRECTIONS = ("ingress", "egress", "unknown")  # drop_dir_* in dropreason.c, by index


class DropKey(ctypes.Structure):
    _fields_ = [("reason", ctypes.c_uint32), ("direction", ctypes.c_uint32)]


class DropValue(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class DropFlowKey(ctypes.Structure):
    _fields_ = [
        ("src", ctypes.c_uint8 * 16),
        ("dst", ctypes.c_uint8 * 16),
        ("reason", ctypes.c_uint32),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


def reason_names(symbols: dict[int, str]) -> dict[int, str]:
    """Kernel names without the enum prefix: SKB_DROP_REASON_NO_SOCKET -> NO_SOCKET."""
    return {v: n.removeprefix("SKB_DROP_REASON_").removeprefix("SKB_") for v, n in symbols.items()}


def last_not_a_drop(names: dict[int, str]) -> int | None:
    """Highest reason number that is not a drop (SKB_NOT_DROPPED_YET, SKB_CONSUMED).

    Named in the table: use them. A table that starts above 0 leaves them out (6.x kernels
    print only real drops): everything below its first entry. A table starting at 0 with a
    real drop (5.17's NOT_SPECIFIED = 0): nothing to skip.
    """
    named = [v for v, n in names.items() if n in ("NOT_DROPPED_YET", "CONSUMED")]
    if named:
        return max(named)
    if names and min(names) > 0:
        return min(names) - 1
    return None


class DropReason(Plugin):
    name = "dropreason"

    def prepare(self) -> ProgramSpec:
        tracepoint = self.ctx.config.plugins.dropreason.tracepoint
        constants, fmt = tracepoint_constants(tracepoint, "skbaddr", optional=("protocol", "reason"))
        self.names: dict[int, str] = {}
        if "reason" in fmt.fields:
            self.names = reason_names(fmt.symbols("reason"))
            constants["have_reason"] = 1
            last = last_not_a_drop(self.names)
            if last is not None:
                constants["last_not_a_drop"] = last
        else:
            self.degraded = (
                f"{tracepoint} has no reason field (kernel before 5.17): drops are "
                "counted under reason UNKNOWN"
            )
            log.warning("dropreason: %s", self.degraded)
        maps = ["drop_counts", "drop_table"]
        constants |= {f"drop_dir_{d}": i for i, d in enumerate(DIRECTIONS)}
        reason_slots = 0
        if "reason" in fmt.fields:
            reason_slots = min(max(self.names, default=REASON_SLOTS_DEFAULT - 1) + 1, REASON_SLOTS_MAX)
        constants |= {"reason_slots": reason_slots, "drop_dirs": len(DIRECTIONS)}
        offsets = [("skb_len_off", "sk_buff", "len"), ("skb_iif_off", "sk_buff", "skb_iif")]
        pod_constants, sizes = self.pod_level_settings(["drop_flows"])
        constants |= pod_constants
        if self.ctx.pod_level is not None:  # adv_drop_*: attribute drops to pods
            if "protocol" not in fmt.fields:
                raise PluginUnavailable(f"tracepoint {tracepoint} has no protocol field (pod-level drops)")
            maps += ["drop_flows", "ips_of_interest"]
            offsets += [
                ("skb_head_off", "sk_buff", "head"),
                ("skb_network_header_off", "sk_buff", "network_header"),
            ]
        return ProgramSpec(
            plugin=self.name,
            obj="dropreason",
            constants=constants,
            max_entries=sizes | {"drop_table": max(reason_slots * len(DIRECTIONS), 1)},
            tracepoints=[(tracepoint, "on_kfree_skb")],
            maps=maps,
            btf_offsets=offsets,
            # names from BTF when the tracepoint has a reason but no table of them (a kernel
            # without a reason field has nothing to name)
            btf_enums=["skb_drop_reason"] if "reason" in fmt.fields and not self.names else [],
        )

    def start(self, loaded: LoadedProgram | None) -> None:
        super().start(loaded)
        assert loaded is not None
        if not self.names and "skb_drop_reason" in loaded.enums:
            self.names = reason_names(loaded.enums["skb_drop_reason"])
        self.names[NO_REASON] = "UNKNOWN"
        for warning in loaded.warnings:
            if "skb_drop_reason" in warning:
                log.warning("dropreason: %s (reasons are named by number)", warning)
            else:
                log.warning("dropreason: %s (without it drop_bytes stays 0, the direction unknown)", warning)
        self.counts = BpfMap(loaded.maps["drop_counts"], DropKey, DropValue, percpu=True)
        self.table = BpfMap(loaded.maps["drop_table"], ctypes.c_uint32, DropValue, percpu=True)
        self._sums = per_cpu_sums(2)  # a per-CPU DropValue's bytes -> (packets, bytes)
        self.snapshot: dict[tuple[str, str], tuple[int, int]] = {}
        self.flows: FlowHarvester | None = None
        if self.ctx.pod_level is not None and "drop_flows" in loaded.maps:
            self.use_pod_filter(loaded)
            self.flows = FlowHarvester(
                BpfMap(loaded.maps["drop_flows"], DropFlowKey, DropValue, percpu=True), 2, self._account_flow
            )
            # the kernel checks the IPs of interest on a drop flow's first drop only
            self.deselected = DeselectedFlows(self.flows, self.ctx.pod_level)
            self.ctx.pod_level.register_metric(
                ADV_COUNT, "Dropped packets of pod traffic by reason and context", ("reason",)
            )
            self.ctx.pod_level.register_metric(
                ADV_BYTES, "Dropped bytes of pod traffic by reason and context", ("reason",)
            )

    def reason_name(self, code: int) -> str:
        return self.names.get(code) or f"UNKNOWN_{code}"

    def harvest(self) -> None:
        snapshot: dict[tuple[str, str], tuple[int, int]] = {}

        def add(reason: int, direction: int, raw_value: bytes) -> None:
            label = (
                self.reason_name(reason),
                DIRECTIONS[direction] if direction < len(DIRECTIONS) else "unknown",
            )
            packets, octets = snapshot.get(label, (0, 0))
            more_packets, more_octets = self._sums(raw_value)
            snapshot[label] = (packets + more_packets, octets + more_octets)

        for raw_key, raw_value in self.table.raw_items():
            if any(raw_value):  # a slot with drops
                add(*divmod(_SLOT.unpack(raw_key)[0], len(DIRECTIONS)), raw_value)
        for raw_key, raw_value in self.counts.raw_items():
            key = DropKey.from_buffer_copy(raw_key)
            add(key.reason, key.direction, raw_value)
        self.snapshot = snapshot
        if self.flows is not None:
            pod_level = self.ctx.pod_level
            self._plans = {m: pod_level.plan(m) for m in ADV_METRICS}
            self._now = time.monotonic()
            self.flows.harvest()
            if n := self.deselected.prune():
                log.debug("removed %d drop flows of pods that left the selection", n)
            pod_level.series.expire({m: pod_level.ttl(m) for m in ADV_METRICS}, self._now)

    def _account_flow(self, raw_key: bytes, deltas: list[int]) -> None:
        src_raw, dst_raw, code, _proto = _FLOW_KEY.unpack_from(raw_key)
        src_ip, dst_ip = addr_str(src_raw), addr_str(dst_raw)
        reason = self.reason_name(code)
        pod_level, series = self.ctx.pod_level, self.ctx.pod_level.series
        for metric, value in ((ADV_COUNT, deltas[0]), (ADV_BYTES, deltas[1])):
            for labels in pod_level.label_sets(self._plans[metric], src_ip, 0, dst_ip, 0):
                series.add(metric, (reason, *labels), value, self._now)

    def collect(self) -> Iterable:
        packets = retina_gauge(
            "drop_count",
            "Packets dropped by the kernel, by drop reason "
            "and direction (ingress: received from an interface; egress: "
            "generated on the node)",
            ["reason", "direction"],
        )
        octets = retina_gauge(
            "drop_bytes", "Bytes dropped by the kernel, by drop reason and direction", ["reason", "direction"]
        )
        for (reason, direction), (n, b) in sorted(self.snapshot.items()):
            add(packets, [reason, direction], n)
            add(octets, [reason, direction], b)
        return [packets, octets]
