"""Run the real ``retina-agent`` as a process and read its metrics: tests, demo, benchmarks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.2,
             message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; raise TimeoutError at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # keep polling; report the last error at the deadline
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {message}"
                       + (f" (last error: {last_exc})" if last_exc else ""))


class Metrics:
    """Parsed Prometheus text. ``value(name, **labels)`` sums the samples that match."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples.append((s.name, s.labels, s.value))

    def value(self, name: str, **labels: str) -> float:
        return sum(v for n, lab, v in self.samples
                   if n == name and all(lab.get(k) == want for k, want in labels.items()))

    def series(self, name: str) -> list[dict[str, str]]:
        return [lab for n, lab, _ in self.samples if n == name]

    def has(self, name: str) -> bool:
        return any(n == name for n, _, _ in self.samples)


class AgentProcess:
    """The agent as a child process with its own config, port and state dir."""

    def __init__(self, config: dict | None = None, *, interval: str = "1s",
                 executable: str | None = None, extra_args: list[str] | None = None) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="retina-agent-"))
        self.port = free_port()
        cfg = {"apiServer": {"host": "127.0.0.1", "port": self.port},
               "metricsIntervalDuration": interval,
               "stateDir": str(self.workdir / "state")}
        cfg.update(config or {})
        self.port = int(cfg["apiServer"].get("port", self.port))
        self.config = cfg
        self.config_path = self.workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.log_path = self.workdir / "agent.log"
        exe = executable or shutil.which("retina-agent") or str(Path(sys.executable).parent
                                                                / "retina-agent")
        self.argv = [exe, "--config", str(self.config_path), *(extra_args or [])]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout: float = 120) -> AgentProcess:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(self._ready, ready_timeout, 0.3, "the agent's /readyz")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"retina-agent exited with {self.proc.returncode}:\n"
                               + self.log_path.read_text()[-3000:])
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def readyz(self) -> dict:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=5) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

    def scrape_text(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            return r.read().decode()

    def scrape(self) -> Metrics:
        return Metrics(self.scrape_text())

    def wait_metric(self, predicate: Callable[[Metrics], bool], timeout: float = 20,
                    message: str = "metric") -> Metrics:
        def check() -> Metrics | None:
            m = self.scrape()
            return m if predicate(m) else None
        return wait_for(check, timeout, 0.3, message)

    def scrape_until(self, predicate: Callable[[Metrics], bool], timeout: float = 20) -> Metrics:
        """Scrape until ``predicate`` holds or the deadline passes; return the last scrape.

        For tests that then assert each number themselves, so a failure shows the values.
        """
        deadline = time.monotonic() + timeout
        while True:
            m = self.scrape()
            if predicate(m) or time.monotonic() > deadline:
                return m
            time.sleep(0.3)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()


def our_tc_filters(pid: int | None = None) -> list[str]:
    """What the agent runs on each interface, as ``dev/direction/retina_<plugin>_<dir>@owner``.

    Read from the kernel: our cls_bpf filters (``tc filter show``) and our TCX links (the
    agent's bpf_link fds in ``/proc/<pid>/fdinfo``). The data path is one program per
    direction; the plugins it runs on an interface are the bits of its ``dp_ifaces`` map, so
    each running plugin is listed (``retina_pp_ingress`` when packetparser runs there).
    ``pid``: one agent's only.
    """
    found = []
    names = {}
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        index, dev = line.split(": ")[0], line.split(": ")[1].split("@")[0]
        names[int(index)] = dev
        for direction in ("ingress", "egress"):
            out = subprocess.run(["tc", "filter", "show", "dev", dev, direction],
                                 capture_output=True, text=True).stdout
            for filt in out.split("\nfilter "):
                words = filt.split()
                for w in words:
                    if w.startswith("retina_") and (pid is None or f"@{pid}." in w):
                        prog_id = int(words[words.index("id") + 1]) if "id" in words else 0
                        found += _expand(dev, int(index), direction, w, prog_id)
    for owner_pid in ([pid] if pid is not None else _retina_pids()):
        for ifindex, direction, prog_id in _tcx_links(owner_pid):
            dev = names.get(ifindex, str(ifindex))
            from retina_agent.tc import process_tag

            owner = process_tag(owner_pid) or f"{owner_pid}."
            found += _expand(dev, ifindex, direction, f"retina_dp_{direction}@{owner}", prog_id)
    return found


def _expand(dev: str, ifindex: int, direction: str, name: str, prog_id: int) -> list[str]:
    """One entry per plugin the data path runs on this interface (from its dp_ifaces map)."""
    base, _, owner = name.partition("@")
    if not base.startswith("retina_dp_") or not prog_id:
        return [f"{dev}/{direction}/{name}"]
    from retina_agent.bpf import syscall
    from retina_agent.bpf.datapath import FEATURE_BITS, FEATURE_SHORT

    bits = _iface_bits(syscall, prog_id, ifindex)
    return [f"{dev}/{direction}/retina_{FEATURE_SHORT[p]}_{direction}@{owner}"
            for p, bit in FEATURE_BITS.items() if bits & bit]


def _iface_bits(syscall, prog_id: int, ifindex: int) -> int:
    from retina_agent.bpf.datapath import InterfaceBits

    try:
        prog_fd = syscall.prog_fd_by_id(prog_id)
    except OSError:
        return 0
    maps: dict[str, int] = {}
    try:
        for map_id in syscall.prog_info(prog_fd).map_ids:
            fd = syscall.map_fd_by_id(map_id)
            maps[syscall.map_info(fd).name] = fd
        if "dp_ifaces" not in maps or "dp_ifaces_hi" not in maps:
            return 0
        return InterfaceBits(maps["dp_ifaces"], maps["dp_ifaces_hi"]).get(ifindex)
    finally:
        os.close(prog_fd)
        for fd in maps.values():
            os.close(fd)


def _retina_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if b"retina" in f.read():
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def _tcx_links(pid: int) -> list[tuple[int, str, int]]:
    """(ifindex, direction, program id) of each TCX link the process holds."""
    links = []
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return links
    for fd in fds:
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                info = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        except OSError:
            continue
        if info.get("link_type", "").strip() != "tcx":
            continue
        attach = info.get("attach_type", "").strip()
        direction = "ingress" if "ingress" in attach or attach.startswith("46") else "egress"
        links.append((int(info["ifindex"]), direction, int(info["prog_id"])))
    return links


def process_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds used, resident set size in bytes) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    with open(f"/proc/{pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return cpu, rss_kb * 1024
