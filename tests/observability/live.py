"""Helpers for the live tests: a lab node with a workload, scraped by a real Prometheus."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from retina_dashboards import build
from retina_dashboards.queries import PanelQuery, panel_queries, substitute
from retina_lab.agent import AgentProcess, wait_for
from retina_lab.prometheus import PrometheusServer

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "retina-alerts.rules.yml"


def all_panel_queries() -> list[PanelQuery]:
    return [
        q
        for path in sorted(build.DEFAULT_DIR.glob("*.json"))
        for q in panel_queries(json.loads(path.read_text()))
    ]


def dashboards(pod_level: bool) -> list[Path]:
    """Dashboard files whose node variable reads adv_* metrics (``pod_level``) or basic ones."""
    from retina_dashboards.queries import variable_selector

    found = []
    for path in sorted(build.DEFAULT_DIR.glob("*.json")):
        variables = {v["name"]: v for v in json.loads(path.read_text())["templating"]["list"]}
        if ("_adv_" in variable_selector(variables["node"])[0]) == pod_level:
            found.append(path)
    return found


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def api(prom: PrometheusServer, path: str, **params: str) -> dict:
    url = prom.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]


@contextmanager
def prometheus_for(agent: AgentProcess) -> Iterator[PrometheusServer]:
    """A Prometheus scraping ``agent`` every second with the alert rules loaded."""
    with PrometheusServer([f"127.0.0.1:{agent.port}"], rule_files=[str(RULES)]) as prom:
        # the first scrape comes ~10 s after start (discovery throttle)
        wait_for(lambda: prom.query("up == 1"), 60, message="Prometheus' first scrape of the agent")
        yield prom


def returns_series(
    prom: PrometheusServer, expr: str, timeout: float, values: dict[str, str] | None = None
) -> list[dict]:
    """Poll until the substituted ``expr`` returns at least one series; [] at the deadline."""
    promql = substitute(expr, values)
    assert "$" not in promql, f"unsubstituted variable in {promql}"
    first = prom.query(promql)  # an invalid query fails here, at once
    if first:
        return first
    try:
        return wait_for(lambda: prom.query(promql), timeout, 1.0, promql)
    except TimeoutError:
        return []


def evaluates(prom: PrometheusServer, expr: str) -> list[dict]:
    """Run ``expr`` once; Prometheus rejects an invalid query with an error (raised here)."""
    return prom.query(substitute(expr))
