"""The TC data path: one program per hook and direction for every TC plugin (``datapath.c``).

Each TC plugin (packetforward, dns, packetparser, latency) contributes a ``Feature``: its bit,
its maps, its constants and map sizes. The agent loads one object (``datapath.bpf.o``, built
by ``python -m retina_agent.bpf.build``) with those features on (``load``); when that fails,
each feature is loaded on its own to find the one at fault, and the object is loaded again
without it, so a plugin's failure costs only that plugin.

This module is the one home of every size and bit the C shares with Python: they reach the C
as ``-D`` flags at build time (``build_defines``), and the plugins read them from here.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from dataclasses import dataclass, field

from retina_agent.bpf.client import load_programs
from retina_agent.bpf.maps import BpfMap
from retina_agent.bpf.spec import LoadedProgram, LoadError, ProgramSpec

# Feature bits in the dp_ifaces map (ifindex -> bits of the plugins on that interface).
FEATURE_BITS = {"packetforward": 1, "dns": 2, "packetparser": 4, "latency": 8}
# The constant that turns a feature on in the object (off: the verifier drops its code).
FEATURE_CONSTANTS = {
    "packetforward": "feat_pf",
    "dns": "feat_dns",
    "packetparser": "feat_pp",
    "latency": "feat_lat",
}
# Every map of a feature in datapath.c: created with one entry when the feature is off.
FEATURE_MAPS = {
    "packetforward": ["pf_counts"],
    "dns": ["dns_totals", "dns_responses", "dns_latency", "dns_inflight", "dns_events", "dns_lost"],
    "packetparser": ["flows", "fast_flows"],
    "latency": ["apiservers", "handshakes", "pending", "latency_hist"],
}
POD_FILTER_MAP = "ips_of_interest"
# Short names: what TC filter names and test listings show per plugin (retina_pp_ingress).
FEATURE_SHORT = {"packetforward": "pf", "dns": "dns", "packetparser": "pp", "latency": "lat"}
MAX_IFACES = 65536  # dp_ifaces array size; larger ifindexes go to dp_ifaces_hi
DNS_LATENCY_SLOTS = 32  # log2 microsecond slots of dns_latency_seconds
DNS_CAPTURE = 512  # bytes of a DNS message sent to user space at pod level
LAT_SLOTS = 65  # Retina's 1 ms linear buckets from 0.5 ms, plus overflow
N_TCP_FLAGS = 10
PROGRAMS = {"ingress": "dp_ingress", "egress": "dp_egress"}
SHARED_MAPS = ["dp_ifaces", "dp_ifaces_hi", "dp_settings"]


def build_defines() -> list[str]:
    """The shared sizes and bits as ``-D`` flags for clang (build.py)."""
    bits = {f"F_{FEATURE_SHORT[n].upper()}": b for n, b in FEATURE_BITS.items()}
    values = {
        **bits,
        "MAX_IFACES": MAX_IFACES,
        "DNS_LATENCY_SLOTS": DNS_LATENCY_SLOTS,
        "DNS_CAPTURE": DNS_CAPTURE,
        "LAT_SLOTS": LAT_SLOTS,
        "N_TCP_FLAGS": N_TCP_FLAGS,
    }
    return [f"-D{k}={v}" for k, v in values.items()]


@dataclass
class Feature:
    """One TC plugin's part of the data path."""

    plugin: str
    maps: list[str]
    constants: dict[str, int] = field(default_factory=dict)
    max_entries: dict[str, int] = field(default_factory=dict)

    @property
    def bit(self) -> int:
        return FEATURE_BITS[self.plugin]


def spec_for(features: list[Feature], obj: str, name: str = "datapath") -> ProgramSpec:
    on = {f.plugin for f in features}
    constants = {FEATURE_CONSTANTS[p]: 1 for p in on}
    sizes = {m: 1 for p, names in FEATURE_MAPS.items() if p not in on for m in names}
    sizes[POD_FILTER_MAP] = 1
    maps = list(SHARED_MAPS)
    for f in features:
        constants |= f.constants
        for m, n in f.max_entries.items():  # the pod filter's size: the largest asked for
            sizes[m] = max(n, sizes[m]) if m == POD_FILTER_MAP else n
        maps += [m for m in f.maps if m not in maps]
    return ProgramSpec(
        plugin=name,
        obj=obj,
        constants=constants,
        max_entries=sizes,
        programs=list(PROGRAMS.values()),
        maps=maps,
    )


@dataclass
class Loaded:
    """The loaded data path: its two programs and shared maps (owned here), and per plugin a
    LoadedProgram with its own duplicates of its maps' fds (so a plugin that stops closes
    only its own)."""

    programs: dict[str, int]  # direction -> program fd
    maps: dict[str, int]  # the shared maps: dp_ifaces, dp_settings
    plugins: dict[str, LoadedProgram | LoadError]
    all_fds: list[int]

    def close(self) -> None:
        for fd in self.all_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.all_fds.clear()


def load(
    features: list[Feature],
    others: list[ProgramSpec] | None = None,
    timeout: float = 180.0,
    obj: str = "datapath",
) -> tuple[Loaded | None, dict[str, LoadedProgram | LoadError]]:
    """Load the data path object with ``features`` on (and ``others``, the tracepoint plugins'
    objects, in the same loader run); isolate a feature that fails to load. ``timeout`` bounds
    each loader run (``bpfLoadTimeout``: an emulated kernel is slow)."""
    specs = list(others or [])
    if features:
        specs.append(spec_for(features, obj))
    results = load_programs(specs, timeout=timeout) if specs else {}
    if not features:
        return None, results
    failed: dict[str, LoadError] = {}
    result = results.pop("datapath", None)
    if isinstance(result, LoadError) and len(features) > 1:
        # Which feature breaks the build? Each alone, in one loader run.
        alone = load_programs([spec_for([f], obj, name=f.plugin) for f in features], timeout=timeout)
        for f in features:
            r = alone.get(f.plugin)
            if isinstance(r, LoadError):
                failed[f.plugin] = r
            elif r is not None:
                r.close()
        good = [f for f in features if f.plugin not in failed]
        if good and len(good) < len(features):
            result = load_programs([spec_for(good, obj)], timeout=timeout).get("datapath")
    if not isinstance(result, LoadedProgram):
        error = result if isinstance(result, LoadError) else LoadError("BPF loader gave nothing")
        return Loaded(
            programs={},
            maps={},
            all_fds=[],
            plugins={f.plugin: failed.get(f.plugin, error) for f in features},
        ), results
    plugins: dict[str, LoadedProgram | LoadError] = dict(failed)
    for f in features:
        if f.plugin in failed:
            continue
        plugins[f.plugin] = LoadedProgram(
            plugin=f.plugin,
            maps={m: os.dup(result.maps[m]) for m in f.maps},
            programs={},
            links=[],
            warnings=list(result.warnings),
        )
    return Loaded(
        programs={d: result.programs[p] for d, p in PROGRAMS.items()},
        maps={m: result.maps[m] for m in SHARED_MAPS},
        plugins=plugins,
        all_fds=[*result.programs.values(), *result.maps.values()],
    ), results


class InterfaceBits:
    """dp_ifaces (array, indexes below MAX_IFACES) and dp_ifaces_hi (hash, the rest)."""

    def __init__(self, array_fd: int, hash_fd: int) -> None:
        self._array = BpfMap(array_fd, ctypes.c_uint32, ctypes.c_uint32)
        self._hash = BpfMap(hash_fd, ctypes.c_uint32, ctypes.c_uint32)

    def set(self, ifindex: int, bits: int) -> None:
        key = ctypes.c_uint32(ifindex)
        if ifindex < MAX_IFACES:
            self._array.update(key, ctypes.c_uint32(bits))
        elif bits:
            self._hash.update(key, ctypes.c_uint32(bits))
        else:
            self._hash.delete(key)

    def get(self, ifindex: int) -> int:
        m = self._array if ifindex < MAX_IFACES else self._hash
        value = m.lookup(ctypes.c_uint32(ifindex))
        return value.value if value is not None else 0


class DpSettings(ctypes.Structure):
    """``struct dp_settings`` in datapath.c (its size is checked against the map's)."""

    _fields_ = [
        ("sample_rate", ctypes.c_uint32),
        ("filter_enabled", ctypes.c_uint32),
        ("api_ports", ctypes.c_uint16 * 4),
    ]


class Settings:
    """The data path's run-time settings (one array element), written by several owners:
    the agent (sampling rate), packetparser (the IP filter), latency (API server ports)."""

    def __init__(self, map_fd: int) -> None:
        self._map = BpfMap(map_fd, ctypes.c_uint32, DpSettings)
        self._lock = threading.Lock()
        self._value = DpSettings(sample_rate=1, filter_enabled=1)
        self._write()

    def _write(self) -> None:
        self._map.update(ctypes.c_uint32(0), self._value)

    @property
    def sample_rate(self) -> int:
        return self._value.sample_rate

    def set_sample_rate(self, rate: int) -> None:
        with self._lock:
            self._value.sample_rate = max(1, int(rate))
            self._write()

    def set_filter(self, enabled: bool) -> None:
        with self._lock:
            self._value.filter_enabled = 1 if enabled else 0
            self._write()

    def set_api_ports(self, ports: list[int]) -> None:
        """Up to four API server ports (the C tests them before its map lookup)."""
        if len(set(ports)) > 4:
            raise ValueError("the latency plugin times at most 4 distinct API server ports")
        with self._lock:
            for i in range(4):
                self._value.api_ports[i] = sorted(set(ports))[i] if i < len(set(ports)) else 0
            self._write()
