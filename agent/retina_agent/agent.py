"""The agent: starts the enabled plugins, harvests them every interval, serves metrics."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from retina_agent.bpf import datapath, syscall
from retina_agent.bpf.datapath import Settings
from retina_agent.bpf.spec import LoadError
from retina_agent.config import AgentConfig
from retina_agent.metrics import CONTROLPLANE, add, counter, gauge, retina_counter
from retina_agent.plugins import REGISTRY
from retina_agent.plugins.base import Plugin, PluginContext, PluginUnavailable, TcPlugin, prepare_plugins
from retina_agent.server import MetricsServer, ServerLimits
from retina_agent.status import RUNNING, STARTING, STOPPED, UNAVAILABLE, PluginStates
from retina_agent.tc import TcManager

log = logging.getLogger(__name__)

#: Pod level: how long start-up waits for the pods and the MetricsConfigurations to be read
#: (the plugins attach after it), and what /readyz says meanwhile.
STARTUP_SYNC_TIMEOUT = 30.0
STARTUP_SYNC_REASON = "waiting for the API server: the pods and MetricsConfigurations of this node"


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.state_dir = Path(config.state_dir)
        self.tc = TcManager(self.state_dir, config.data_path_attach)
        self.datapath: datapath.Loaded | None = None
        self.budget = SamplingBudget(config.data_sampling_rate, config.data_path_budget)
        self.pod_level = None
        if config.enable_pod_level:
            from retina_agent.podlevel.cluster import build_pod_level

            self.pod_level = build_pod_level(config)
        self.ctx = PluginContext(
            config=config, tc=self.tc, state_dir=self.state_dir, pod_level=self.pod_level
        )
        self.plugins: dict[str, Plugin] = {n: REGISTRY[n](self.ctx) for n in config.enabled_plugin}
        self.states = PluginStates(list(self.plugins))
        self.running: dict[str, Plugin] = {}
        self.harvest_failures: dict[str, int] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        api = config.api_server
        self.server = MetricsServer(
            api.host,
            api.port,
            self.registry,
            self.states,
            self.pod_level.render if self.pod_level else None,
            ServerLimits(
                read_timeout=api.read_timeout,
                write_timeout=api.write_timeout,
                max_connections=api.max_connections,
                workers=api.workers,
            ),
        )
        self.stopping = threading.Event()

    # -- start -------------------------------------------------------------------------------
    def start(self) -> None:
        self.server.start()
        log.info(
            "serving /metrics, /healthz and /readyz on %s:%d", self.config.api_server.host, self.server.port
        )
        stale = self.tc.cleanup_stale()
        if stale:
            log.warning("removed stale TC state left by an earlier agent: %s", ", ".join(stale))
        if self.pod_level is not None:
            self._start_pod_level()
        prepared = prepare_plugins(self.plugins)
        for name, reason in prepared.unavailable.items():
            self._unavailable(name, reason)
        specs, features = prepared.specs, prepared.features
        started = time.monotonic()
        self.datapath, loaded = datapath.load(features, specs, timeout=self.config.bpf_load_timeout)
        if specs or features:
            log.info(
                "loaded %d BPF objects in %.1fs",
                len(specs) + (1 if features else 0),
                time.monotonic() - started,
            )
        if self.datapath is not None:
            loaded.update(self.datapath.plugins)
            if self.datapath.programs:
                self.tc.set_datapath(
                    self.datapath.programs,
                    datapath.InterfaceBits(
                        self.datapath.maps["dp_ifaces"], self.datapath.maps["dp_ifaces_hi"]
                    ),
                )
                self.ctx.datapath = Settings(self.datapath.maps["dp_settings"])
                self.ctx.datapath.set_sample_rate(self.budget.rate)
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
            attach = self.tc.mode if isinstance(plugin, TcPlugin) else ""
            # A plugin that runs degraded (dropreason without the reason field) says so.
            self.states.set(name, RUNNING, plugin.degraded, attach=attach)
            log.info(
                "plugin %s running%s%s",
                name,
                f" (attached with {attach})" if attach else "",
                f" ({plugin.degraded})" if plugin.degraded else "",
            )
        self.budget.start(self._program_fds(), self.config.metrics_interval)

    def _program_fds(self) -> list[int]:
        """Every BPF program of ours: the data path's and the tracepoint plugins'."""
        fds = list(self.datapath.programs.values()) if self.datapath else []
        for plugin in self.running.values():
            if plugin.loaded is not None:
                fds += plugin.loaded.programs.values()
        return fds

    def _start_pod_level(self) -> None:
        """Read the pods and the MetricsConfiguration in force before any packet is counted:
        a series counted before would carry the wrong pod (unknown) or the default labels,
        and the configuration's arrival restarts every series, losing what was counted."""
        pl = self.pod_level
        for name in self.plugins:  # /readyz says what the agent waits for
            self.states.set(name, STARTING, STARTUP_SYNC_REASON)
        deadline = time.monotonic() + STARTUP_SYNC_TIMEOUT
        waits = []
        if pl.cache is not None:
            pl.cache.start()
            waits.append(("the pod cache", "pod labels fill in as it does", pl.cache.wait_synced))
        if pl.watcher is not None:
            pl.watcher.start()
            waits.append(
                (
                    "the MetricsConfigurations",
                    "series restart with its labels when it arrives",
                    pl.watcher.wait_synced,
                )
            )
        for what, consequence, synced in waits:
            if not synced(max(0.0, deadline - time.monotonic())):
                log.warning("%s not read in %.0fs; %s", what, STARTUP_SYNC_TIMEOUT, consequence)
        for name in self.plugins:
            self.states.set(name, STARTING)
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
        rate = self.budget.check()
        if self.ctx.datapath is not None and rate != self.ctx.datapath.sample_rate:
            self.ctx.datapath.set_sample_rate(rate)
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

    # -- data path on/off (benchmarks alternate these in one process) ------------------------
    def pause_datapath(self) -> None:
        """Detach every BPF program of ours from the data path; maps and state stay."""
        self.tc.pause()
        for plugin in self.running.values():
            plugin.set_tracepoints(False)

    def resume_datapath(self) -> None:
        for plugin in self.running.values():
            plugin.set_tracepoints(True)
        self.tc.resume()

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
        if self.datapath is not None:
            self.datapath.close()
        self.budget.stop()
        self.server.stop()

    # -- metrics -----------------------------------------------------------------------------
    def collect(self) -> Iterable[Metric]:
        for name, plugin in list(self.running.items()):
            try:
                yield from plugin.collect()
            except Exception:
                log.exception("collect of %s failed", name)
        status = gauge(
            "plugin_status",
            "1 for each plugin with its current state (running, unavailable, "
            "starting, stopped), the reason when it is not running or runs degraded, and how a "
            "TC plugin's data path is attached (tcx or cls_bpf)",
            ["plugin", "state", "reason", "attach"],
            prefix=CONTROLPLANE,
        )
        for name, s in self.states.snapshot().items():
            add(status, [name, s.state, s.reason, s.attach], 1)
        yield status
        yield from self.budget.metrics()
        stale = counter(
            "stale_tc_removed",
            "Stale TC filters and clsact qdiscs of an earlier agent removed at start",
            prefix=CONTROLPLANE,
        )
        add(stale, [], self.tc.stale_removed)
        yield stale
        failures = counter(
            "harvest_failures", "Failed harvests of a plugin's kernel maps", ["plugin"], prefix=CONTROLPLANE
        )
        for name, n in self.harvest_failures.items():
            add(failures, [name], n)
        yield failures
        if self.pod_level is not None:
            yield from self._pod_level_metrics()

    def _pod_level_metrics(self) -> Iterable[Metric]:
        store = self.pod_level.series
        count = gauge("series", "Pod-level series held by the agent", prefix=CONTROLPLANE)
        add(count, [], store.count)
        cap = gauge(
            "series_cap_reached",
            "1 when the pod-level series cap (podLevel.maxSeries) is reached and new series are refused",
            prefix=CONTROLPLANE,
        )
        add(cap, [], 1 if store.cap_reached else 0)
        overflow = counter(
            "series_overflow",
            "Pod-level series refused because the cap was reached, by metric",
            ["metric"],
            prefix=CONTROLPLANE,
        )
        for metric, n in store.overflow.items():
            add(overflow, [metric], n)
        expired = retina_counter(
            "expired_metrics_counter", "Pod-level series expired after their ttl", ["metric"]
        )
        for metric, n in store.expired.items():
            add(expired, [metric], n)
        yield from (count, cap, overflow, expired)
        cache = self.pod_level.cache
        if cache is not None:
            connected = gauge(
                "kubernetes_connected",
                "1 while the pod cache's watches are connected to the API server",
                prefix=CONTROLPLANE,
            )
            add(connected, [], 1 if cache.connected else 0)
            yield connected


class SamplingBudget:
    """dataSamplingRate, and the dataPathBudget controller that raises it under load.

    With a budget (percent of one core), every harvest compares the kernel time of all our
    programs with the budget: over it, the sampling rate doubles (up to ``MAX_RATE``); under
    half of it, the rate halves (down to the configured one).

    The kernel time comes from run-time accounting (BPF_ENABLE_STATS), which costs two clock
    reads per program run: on a VM that is more than our programs themselves (bench/datapath.py,
    "run-time accounting on/off"). So it is not held on: it is on for a window of
    ``ACCOUNTING_SHARE`` of each interval, opened at each harvest and closed by a timer, and the
    share of a core measured in the window stands for the interval. The window's fd ends with
    the agent, so a killed agent leaves no accounting on.
    """

    MAX_RATE = 1024
    ACCOUNTING_SHARE = 0.1  # of each harvest interval with run-time accounting on

    def __init__(self, configured: int, budget_percent: float | None) -> None:
        self.configured = configured
        self.rate = configured
        self.budget = budget_percent / 100 if budget_percent else None
        self.share: float | None = None  # measured in the last closed window
        self._fds: list[int] = []
        self._window_s = 0.0
        self._lock = threading.Lock()
        self._stats_fd: int | None = None
        self._opened: tuple[int, int] | None = None  # (run time, monotonic ns) at the window's start
        self._measured: float | None = None  # the last window's share, not yet acted on
        self._timer: threading.Timer | None = None

    def start(self, program_fds: list[int], interval: float) -> None:
        if self.budget is None:
            return
        self._fds = program_fds
        self._window_s = interval * self.ACCOUNTING_SHARE
        self._open_window()

    def _open_window(self) -> None:
        with self._lock:
            if self._stats_fd is not None or self.budget is None:
                return  # the last window is still open (a late harvest)
            try:
                self._stats_fd = syscall.enable_stats()
            except OSError as exc:
                log.warning(
                    "dataPathBudget: cannot turn on BPF run-time accounting (%s); "
                    "the sampling rate stays at %d",
                    exc,
                    self.rate,
                )
                self.budget = None
                return
            self._opened = (self._run_time(), time.monotonic_ns())
            self._timer = threading.Timer(self._window_s, self._close_window)
            self._timer.daemon = True
            self._timer.start()

    def _close_window(self) -> None:
        with self._lock:
            if self._stats_fd is None or self._opened is None:
                return
            run_ns, now_ns = self._run_time(), time.monotonic_ns()
            os.close(self._stats_fd)
            self._stats_fd = None
            opened_run, opened_now = self._opened
            if now_ns > opened_now:
                self._measured = (run_ns - opened_run) / (now_ns - opened_now)

    def _run_time(self) -> int:
        total = 0
        for fd in self._fds:
            with contextlib.suppress(OSError):
                total += syscall.prog_info(fd).run_time_ns
        return total

    def check(self) -> int:
        """The sampling rate for the next interval (from the window closed since the last check);
        opens the next window."""
        if self.budget is None:
            return self.rate
        with self._lock:
            measured, self._measured = self._measured, None
        if measured is not None:
            self.share = measured
            old = self.rate
            if measured > self.budget and self.rate < self.MAX_RATE:
                self.rate = min(self.rate * 2, self.MAX_RATE)
            elif measured < self.budget / 2 and self.rate > self.configured:
                self.rate = max(self.rate // 2, self.configured)
            if self.rate != old:
                log.warning(
                    "data path used %.2f%% of a core (budget %.2f%%): sampling 1 in %d "
                    "pod-level flow and DNS events (was 1 in %d)",
                    measured * 100,
                    self.budget * 100,
                    self.rate,
                    old,
                )
        self._open_window()
        return self.rate

    def stop(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            if self._stats_fd is not None:
                os.close(self._stats_fd)
                self._stats_fd = None

    def metrics(self) -> Iterable[Metric]:
        rate = gauge(
            "data_sampling_rate",
            "Pod-level flow and DNS events are sampled 1 in "
            "this many (dataSamplingRate, raised by dataPathBudget under load)",
            prefix=CONTROLPLANE,
        )
        add(rate, [], self.rate)
        yield rate
        if self.budget is not None:
            budget = gauge(
                "datapath_budget_ratio",
                "dataPathBudget: the share of one core the BPF programs may use",
                prefix=CONTROLPLANE,
            )
            add(budget, [], self.budget)
            yield budget
            if self.share is not None:
                share = gauge(
                    "datapath_cpu_ratio",
                    "Share of one core the agent's BPF programs used in the last interval",
                    prefix=CONTROLPLANE,
                )
                add(share, [], self.share)
                yield share


def _malloc_trim() -> None:
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class _Collector:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterable[Metric]:
        return self.agent.collect()
