"""What every plugin is: a name, what it needs, how it starts, harvests and reports."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import ClassVar

from prometheus_client.metrics_core import Metric

from retina_agent.bpf.spec import LoadedProgram, ProgramSpec
from retina_agent.config import AgentConfig
from retina_agent.podlevel import PodLevel
from retina_agent.tc import TcManager

log = logging.getLogger(__name__)


class PluginUnavailable(Exception):
    """The plugin cannot run on this node; the message says why (and the fix when known)."""


@dataclass
class PluginContext:
    config: AgentConfig
    tc: TcManager
    state_dir: Path
    pod_level: PodLevel | None = None


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

    def prepare(self) -> ProgramSpec | None:
        return None

    def start(self, loaded: LoadedProgram | None) -> None:
        self.loaded = loaded

    @abstractmethod
    def harvest(self) -> None:
        """Read kernel state into this plugin's snapshot (runs every metrics interval)."""

    @abstractmethod
    def collect(self) -> Iterable[Metric]:
        """Metric families from the latest snapshot (runs on every scrape)."""

    def stop(self) -> None:
        if self.loaded is not None:
            self.loaded.close()
            self.loaded = None


def bpf_source(filename: str) -> str:
    """The text of a BPF C file shipped in ``retina_agent/bpf``, local headers inlined.

    bcc rewrites its map syntax (``map.lookup(&key)``) only in the main source, so a shared
    header such as ``pod_filter.h`` is pasted in place of its ``#include "..."`` line.
    """
    folder = resources.files("retina_agent.bpf")
    lines = []
    for line in folder.joinpath(filename).read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith('#include "') and stripped.endswith('"'):
            lines.append(folder.joinpath(stripped[len('#include "'):-1]).read_text())
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"
