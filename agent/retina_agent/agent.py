"""The agent: starts the enabled plugins, harvests them every interval, serves metrics."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from retina_agent.bpf.client import load_programs
from retina_agent.bpf.spec import LoadError
from retina_agent.config import AgentConfig
from retina_agent.metrics import CONTROLPLANE, add, counter, gauge, retina_counter
from retina_agent.plugins import REGISTRY
from retina_agent.plugins.base import Plugin, PluginContext, PluginUnavailable
from retina_agent.server import MetricsServer
from retina_agent.status import RUNNING, STOPPED, UNAVAILABLE, PluginStates
from retina_agent.tc import TcManager

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.state_dir = Path(config.state_dir)
        self.tc = TcManager(self.state_dir)
        self.pod_level = None
        if config.enable_pod_level:
            from retina_agent.podlevel.cluster import build_pod_level

            self.pod_level = build_pod_level(config)
        ctx = PluginContext(config=config, tc=self.tc, state_dir=self.state_dir,
                            pod_level=self.pod_level)
        self.plugins: dict[str, Plugin] = {n: REGISTRY[n](ctx) for n in config.enabled_plugin}
        self.states = PluginStates(list(self.plugins))
        self.running: dict[str, Plugin] = {}
        self.harvest_failures: dict[str, int] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self.server = MetricsServer(config.api_server.host, config.api_server.port,
                                    self.registry, self.states,
                                    self.pod_level.render if self.pod_level else None)
        self.stopping = threading.Event()

    # -- start -------------------------------------------------------------------------------
    def start(self) -> None:
        self.server.start()
        log.info("serving /metrics, /healthz and /readyz on %s:%d",
                 self.config.api_server.host, self.server.port)
        stale = self.tc.cleanup_stale()
        if stale:
            log.info("removed stale TC state from an earlier run: %s", ", ".join(stale))
        if self.pod_level is not None:
            self._start_pod_level()
        specs = {}
        for name, plugin in self.plugins.items():
            try:
                spec = plugin.prepare()
            except PluginUnavailable as exc:
                self._unavailable(name, str(exc))
                continue
            if spec is not None:
                specs[name] = spec
        started = time.monotonic()
        loaded = (load_programs(list(specs.values()), timeout=self.config.bpf_compile_timeout)
                  if specs else {})
        if specs:
            log.info("compiled and loaded %d BPF programs in %.1fs", len(specs),
                     time.monotonic() - started)
        self.tc.start()
        for name, plugin in self.plugins.items():
            if self.states.snapshot()[name].state == UNAVAILABLE:
                continue
            result = loaded.get(name)
            if isinstance(result, LoadError):
                self._unavailable(name, str(result))
                continue
            try:
                plugin.start(result)
                plugin.harvest()
            except PluginUnavailable as exc:
                plugin.stop()
                self._unavailable(name, str(exc))
                continue
            except Exception as exc:
                log.exception("plugin %s failed to start", name)
                plugin.stop()
                self._unavailable(name, f"failed to start: {exc}")
                continue
            self.running[name] = plugin
            self.states.set(name, RUNNING, plugin.degraded)
            log.info("plugin %s running%s", name, f" ({plugin.degraded})" if plugin.degraded else "")

    def _start_pod_level(self) -> None:
        pl = self.pod_level
        if pl.cache is not None:
            pl.cache.start()
            if not pl.cache.wait_synced(30):
                log.warning("the pod cache has not synced in 30s; pod labels fill in as it does")
        if pl.watcher is not None:
            pl.watcher.start()
        pl.start()

    def _unavailable(self, name: str, reason: str) -> None:
        log.warning("plugin %s unavailable: %s", name, reason)
        self.states.set(name, UNAVAILABLE, reason)

    # -- run ---------------------------------------------------------------------------------
    def run(self) -> None:
        """Harvest every interval until ``stop`` is called (signal handlers call it)."""
        interval = self.config.metrics_interval
        while not self.stopping.wait(interval):
            self.harvest()

    def harvest(self) -> None:
        if self.pod_level is not None:
            self.pod_level.refresh()
        for name, plugin in list(self.running.items()):
            try:
                plugin.harvest()
            except Exception:
                self.harvest_failures[name] = self.harvest_failures.get(name, 0) + 1
                log.exception("harvest of %s failed", name)
        if self.pod_level is not None:
            _malloc_trim()  # hand the batch buffers and freed series back to the system

    # -- stop --------------------------------------------------------------------------------
    def stop(self) -> None:
        self.stopping.set()

    def shutdown(self) -> None:
        """Detach everything: TC filters and qdiscs we added, tracepoints, maps."""
        self.tc.stop()
        if self.pod_level is not None:
            for part in (self.pod_level.watcher, self.pod_level.cache):
                if part is not None:
                    try:
                        part.stop()
                    except Exception:
                        log.exception("stopping %s failed", type(part).__name__)
        for name, plugin in self.plugins.items():
            try:
                plugin.stop()
            except Exception:
                log.exception("plugin %s failed to stop", name)
            if name in self.running:
                self.states.set(name, STOPPED)
        self.running.clear()
        self.server.stop()

    # -- metrics -----------------------------------------------------------------------------
    def collect(self) -> Iterable[Metric]:
        for name, plugin in list(self.running.items()):
            try:
                yield from plugin.collect()
            except Exception:
                log.exception("collect of %s failed", name)
        status = gauge("plugin_status",
                       "1 for each plugin with its current state (running, unavailable, "
                       "starting, stopped) and the reason when it is not running or runs degraded",
                       ["plugin", "state", "reason"], prefix=CONTROLPLANE)
        for name, s in self.states.snapshot().items():
            add(status, [name, s.state, s.reason], 1)
        yield status
        failures = counter("harvest_failures", "Failed harvests of a plugin's kernel maps",
                           ["plugin"], prefix=CONTROLPLANE)
        for name, n in self.harvest_failures.items():
            add(failures, [name], n)
        yield failures
        if self.pod_level is not None:
            yield from self._pod_level_metrics()

    def _pod_level_metrics(self) -> Iterable[Metric]:
        store = self.pod_level.series
        count = gauge("series", "Pod-level series held by the agent", prefix=CONTROLPLANE)
        add(count, [], store.count)
        cap = gauge("series_cap_reached", "1 when the pod-level series cap (podLevel.maxSeries) "
                    "is reached and new series are refused", prefix=CONTROLPLANE)
        add(cap, [], 1 if store.cap_reached else 0)
        overflow = counter("series_overflow", "Pod-level series refused because the cap was "
                           "reached, by metric", ["metric"], prefix=CONTROLPLANE)
        for metric, n in store.overflow.items():
            add(overflow, [metric], n)
        expired = retina_counter("expired_metrics_counter",
                                 "Pod-level series expired after their ttl", ["metric"])
        for metric, n in store.expired.items():
            add(expired, [metric], n)
        yield from (count, cap, overflow, expired)
        cache = self.pod_level.cache
        if cache is not None:
            connected = gauge("kubernetes_connected", "1 while the pod cache's watches are "
                              "connected to the API server", prefix=CONTROLPLANE)
            add(connected, [], 1 if cache.connected else 0)
            yield connected


def _malloc_trim() -> None:
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class _Collector:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterable[Metric]:
        return self.agent.collect()
