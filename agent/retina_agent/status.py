"""Plugin states: what /readyz and the plugin status metric report."""

from __future__ import annotations

import threading
from dataclasses import dataclass

STARTING, RUNNING, UNAVAILABLE, STOPPED = "starting", "running", "unavailable", "stopped"


@dataclass
class PluginState:
    state: str = STARTING
    reason: str = ""
    attach: str = ""  # TC plugins: how the data path is attached (tcx, cls_bpf)


class PluginStates:
    def __init__(self, names: list[str]) -> None:
        self._lock = threading.Lock()
        self._states = {n: PluginState() for n in names}

    def set(self, name: str, state: str, reason: str = "", attach: str = "") -> None:
        with self._lock:
            self._states[name] = PluginState(state, reason, attach)

    def snapshot(self) -> dict[str, PluginState]:
        with self._lock:
            return dict(self._states)

    def ready(self) -> bool:
        """Every enabled plugin is either running or reported unavailable."""
        return all(s.state in (RUNNING, UNAVAILABLE) for s in self.snapshot().values())
