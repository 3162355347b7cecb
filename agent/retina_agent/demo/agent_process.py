"""Run the real ``retina-agent`` as a child process and read its metrics (the demo, tests and
benchmarks use it): its own config file, port and state directory, ready once ``/readyz`` says so."""

from __future__ import annotations

import json
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


def wait_for(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.2, message: str = "condition"
) -> Any:
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
    raise TimeoutError(
        f"timed out after {timeout:.0f}s waiting for {message}"
        + (f" (last error: {last_exc})" if last_exc else "")
    )


class Metrics:
    """Parsed Prometheus text. ``value(name, **labels)`` sums the samples that match."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples.append((s.name, s.labels, s.value))

    def value(self, name: str, **labels: str) -> float:
        return sum(
            v
            for n, lab, v in self.samples
            if n == name and all(lab.get(k) == want for k, want in labels.items())
        )

    def series(self, name: str) -> list[dict[str, str]]:
        return [lab for n, lab, _ in self.samples if n == name]

    def has(self, name: str) -> bool:
        return any(n == name for n, _, _ in self.samples)


class AgentProcess:
    """The agent as a child process with its own config, port and state dir."""

    def __init__(
        self,
        config: dict | None = None,
        *,
        interval: str = "1s",
        executable: str | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="retina-agent-"))
        self.port = free_port()
        cfg = {
            "apiServer": {"host": "127.0.0.1", "port": self.port},
            "metricsIntervalDuration": interval,
            "stateDir": str(self.workdir / "state"),
        }
        cfg.update(config or {})
        self.port = int(cfg["apiServer"].get("port", self.port))
        self.config = cfg
        self.config_path = self.workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.log_path = self.workdir / "agent.log"
        exe = executable or shutil.which("retina-agent") or str(Path(sys.executable).parent / "retina-agent")
        self.argv = [exe, "--config", str(self.config_path), *(extra_args or [])]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout: float = 120, *, wait_ready: bool = True) -> AgentProcess:
        """Start the agent and (unless ``wait_ready`` is False) wait until ``/readyz`` says so."""
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT)
        if wait_ready:
            self.wait_ready(ready_timeout)
        return self

    def wait_ready(self, timeout: float = 120) -> None:
        wait_for(self._ready, timeout, 0.3, "the agent's /readyz")

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"retina-agent exited with {self.proc.returncode}:\n" + self.log_path.read_text()[-3000:]
            )
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

    def wait_metric(
        self, predicate: Callable[[Metrics], bool], timeout: float = 20, message: str = "metric"
    ) -> Metrics:
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
