"""A real Alertmanager (Debian's ``prometheus-alertmanager``) with webhook receivers, for tests.

Alerts reach it the way Prometheus sends them (``POST /api/v2/alerts``, :meth:`post_alerts`) or
from a real Prometheus whose ``alerting`` section points at :attr:`url`. Clustering is off
(``--cluster.listen-address=``) so nothing listens beyond the one loopback port.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from retina_lab.agent import free_port, wait_for


class AlertmanagerServer:
    def __init__(self, config: dict[str, Any]) -> None:
        self.binary = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
        self.workdir = Path(tempfile.mkdtemp(prefix="retina-alertmanager-"))
        self.port = free_port()
        (self.workdir / "alertmanager.yml").write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_text(self) -> str:
        path = self.workdir / "alertmanager.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout: float = 60) -> AlertmanagerServer:
        self._log = open(self.workdir / "alertmanager.log", "wb")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.workdir / 'alertmanager.yml'}",
                f"--storage.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._ready, timeout, 0.3, "Alertmanager /-/ready")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError("alertmanager exited: " + self.log_text[-2000:])
        with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
            return r.status == 200

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """What Prometheus does: ``POST /api/v2/alerts``."""
        request = urllib.request.Request(
            self.url + "/api/v2/alerts",
            data=json.dumps(alerts).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            if r.status != 200:
                raise RuntimeError(f"alertmanager refused the alerts: {r.status}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self._log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> AlertmanagerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
