"""What every plugin is: a name, what it needs, how it starts, harvests and reports."""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from prometheus_client.metrics_core import Metric

from retina_agent.bpf.datapath import Feature, Settings
from retina_agent.bpf.maps import BpfMap
from retina_agent.bpf.spec import LoadedProgram, ProgramSpec
from retina_agent.config import AgentConfig
from retina_agent.links import LinkSelector
from retina_agent.podlevel import AddrKey, PodLevel
from retina_agent.tc import TcManager

log = logging.getLogger(__name__)
PERF_EVENT_IOC_ENABLE, PERF_EVENT_IOC_DISABLE = 0x2400, 0x2401


class PluginUnavailable(Exception):
    """The plugin cannot run on this node; the message says why (and the fix when known)."""


@dataclass
class PluginContext:
    config: AgentConfig
    tc: TcManager
    state_dir: Path
    pod_level: PodLevel | None = None
    datapath: Settings | None = None  # the TC data path's settings, once it is loaded


class Plugin(ABC):
    """One plugin. Subclasses set ``name`` and implement ``harvest`` and ``collect``.

    Lifecycle: ``prepare()`` checks the node and returns a ProgramSpec for eBPF plugins (None
    for the others), ``start(loaded)`` takes the fds the loader returned, then ``harvest()``
    runs every metrics interval and ``collect()`` on every scrape, ``stop()`` once.
    """

    name: ClassVar[str]

    def __init__(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        self.loaded: LoadedProgram | None = None
        self._lock = threading.Lock()
        #: Set by a plugin that runs with less than it should (the status metric's reason).
        self.degraded = ""

    def prepare(self) -> ProgramSpec | Feature | None:
        return None

    def start(self, loaded: LoadedProgram | None) -> None:
        self.loaded = loaded

    @abstractmethod
    def harvest(self) -> None:
        """Read kernel state into this plugin's snapshot (runs every metrics interval)."""

    @abstractmethod
    def collect(self) -> Iterable[Metric]:
        """Metric families from the latest snapshot (runs on every scrape)."""

    def set_tracepoints(self, enabled: bool) -> None:
        """Enable or disable this plugin's tracepoint programs (their perf events)."""
        if self.loaded is None:
            return
        request = PERF_EVENT_IOC_ENABLE if enabled else PERF_EVENT_IOC_DISABLE
        for fd in self.loaded.links:
            fcntl.ioctl(fd, request, 0)

    def stop(self) -> None:
        if self.loaded is not None:
            self.loaded.close()
            self.loaded = None

    def use_pod_filter(self, loaded: LoadedProgram) -> None:
        """Let PodLevel keep this plugin's IPs-of-interest map, if its program has one."""
        if self.ctx.pod_level is not None and "ips_of_interest" in loaded.maps:
            self.ctx.pod_level.register_filter(
                BpfMap(loaded.maps["ips_of_interest"], AddrKey, ctypes.c_uint8)
            )

    def pod_level_settings(self, maps: list[str]) -> tuple[dict[str, int], dict[str, int]]:
        """Constants and map sizes of a program's pod-level part: on (``pod_level``) with the
        filter map sized by maxIPs, or off with ``maps`` and the filter map at one entry (the
        object always has them, but unused they should cost no memory)."""
        if self.ctx.pod_level is None:
            return {}, dict.fromkeys([*maps, "ips_of_interest"], 1)
        return {"pod_level": 1}, {"ips_of_interest": self.ctx.config.plugins.packetparser.max_ips}


class TcPlugin(Plugin):
    """A plugin that runs in the shared TC data path (``bpf/datapath.c``).

    ``prepare`` returns its ``Feature`` (maps, constants and map sizes); once started, ``attach_tc`` turns its
    bit on for the interfaces its ``plugins.<name>.interfaces`` selects, and ``stop`` (also
    after a failure) turns it off again: the data path itself stays for the other plugins.
    """

    def interfaces(self) -> list[str]:
        return list(getattr(self.ctx.config.plugins, self.name).interfaces)

    def attach_tc(self) -> None:
        self.ctx.tc.enable(self.name, LinkSelector(self.interfaces()))

    def stop(self) -> None:
        self.ctx.tc.disable(self.name)
        super().stop()


@dataclass
class Prepared:
    """What the enabled plugins ask the loader for: the agent's start and ``retina_agent.verify``
    both take it from ``prepare_plugins``."""

    features: list[Feature] = field(default_factory=list)
    specs: list[ProgramSpec] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    degraded: dict[str, str] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """Equal for two configurations that load the same programs with the same constants."""
        data = {
            "features": sorted((asdict(f) for f in self.features), key=lambda f: f["plugin"]),
            "specs": sorted((s.to_json() for s in self.specs), key=lambda s: s["plugin"]),
            "unavailable": self.unavailable,
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def prepare_plugins(plugins: dict[str, Plugin]) -> Prepared:
    """Each plugin's ``prepare``: a Feature of the TC data path, a ProgramSpec of its own, nothing
    (no BPF), or PluginUnavailable with its reason."""
    out = Prepared()
    for name, plugin in plugins.items():
        try:
            spec = plugin.prepare()
        except PluginUnavailable as exc:
            out.unavailable[name] = str(exc)
            continue
        if isinstance(spec, Feature):
            out.features.append(spec)
        elif spec is not None:
            out.specs.append(spec)
        if plugin.degraded:
            out.degraded[name] = plugin.degraded
    return out
