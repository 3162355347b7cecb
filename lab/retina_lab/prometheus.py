"""A real Prometheus server (Debian's package) scraping given targets, for tests and the demo."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from retina_lab.agent import free_port, wait_for


class PrometheusServer:
    def __init__(
        self,
        targets: list[str],
        scrape_interval: str = "1s",
        rule_files: list[str] | None = None,
        other_nodes: dict[str, list[str]] | None = None,
    ) -> None:
        """``targets`` are scraped as node ``lab-node``; ``other_nodes`` maps more node names
        (the ``instance`` label, as the installer's scrape job sets it) to their targets."""
        self.binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        self.workdir = Path(tempfile.mkdtemp(prefix="retina-prometheus-"))
        self.port = free_port()
        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "scrape_configs": [
                {
                    "job_name": "retina-agent",
                    "static_configs": [{"targets": targets, "labels": {"instance": "lab-node"}}]
                    + [
                        {"targets": more, "labels": {"instance": node}}
                        for node, more in (other_nodes or {}).items()
                    ],
                }
            ],
        }
        if rule_files:
            config["rule_files"] = rule_files
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> PrometheusServer:
        self._log = open(self.workdir / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._ready, timeout, 0.3, "Prometheus /-/ready")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError("prometheus exited: " + (self.workdir / "prometheus.log").read_text()[-2000:])
        with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
            return r.status == 200

    def query(self, promql: str) -> list[dict]:
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {body}")
        return body["data"]["result"]

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

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
