"""A real Alertmanager (Debian's ``prometheus-alertmanager``) with webhook receivers, for tests.

Alerts reach it the way Prometheus sends them (``POST /api/v2/alerts``, :meth:`post_alerts`) or
from a real Prometheus whose ``alerting`` section points at :attr:`url`. Clustering is off
(``--cluster.listen-address=``) so nothing listens beyond the one loopback port.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import yaml

from retina_lab.localserver import LocalServer


class AlertmanagerServer(LocalServer):
    name = "alertmanager"
    binary_name = "prometheus-alertmanager"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        (self.workdir / "alertmanager.yml").write_text(yaml.safe_dump(config))

    def argv(self) -> list[str]:
        return [
            f"--config.file={self.workdir / 'alertmanager.yml'}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
        ]

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
