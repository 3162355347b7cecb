"""A real Prometheus server (Debian's package) scraping given targets, for tests and the demo."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import yaml

from retina_lab.localserver import LocalServer


class PrometheusServer(LocalServer):
    name = "prometheus"
    binary_name = "prometheus"

    def __init__(
        self,
        targets: list[str],
        scrape_interval: str = "1s",
        rule_files: list[str] | None = None,
        other_nodes: dict[str, list[str]] | None = None,
    ) -> None:
        """``targets`` are scraped as node ``lab-node``; ``other_nodes`` maps more node names
        (the ``instance`` label, as the installer's scrape job sets it) to their targets."""
        super().__init__()
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

    def argv(self) -> list[str]:
        return [
            f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]

    def query(self, promql: str) -> list[dict]:
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {body}")
        return body["data"]["result"]
