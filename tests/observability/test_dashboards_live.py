"""Every node-level panel and alert rule, evaluated by a real Prometheus scraping the real agent.

A lab node with pods a and b carries a steady workload (forwarded UDP, iptables drops, refused
TCP connects, DNS with NXDOMAIN answers, a lossy TCP stream); Prometheus (Debian's package)
scrapes the agent every second with the alert rules loaded.  Each panel query, its variables
replaced as Grafana would with "All" selected, must return at least one series; panels that
say "Empty on a healthy node." only have to be valid.  Pod-level panels (adv_* metrics) are in
test_pod_dashboards_live.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from retina_dashboards import build
from retina_dashboards.queries import substitute, variable_selector
from retina_lab import LabNode
from retina_lab.agent import AgentProcess, our_tc_filters, wait_for
from retina_lab.workload import LabWorkload
from tests.observability.live import (
    all_panel_queries,
    api,
    dashboards,
    evaluates,
    prometheus_for,
    returns_series,
    rules,
)

NODE_QUERIES = [q for q in all_panel_queries() if not q.pod_level]
#: Rules whose expression returns series on the lab node under the workload's drops and NXDOMAINs.
FIRE_IN_LAB = {"RetinaNodeDropsRising", "RetinaDNSErrorRatioHigh"}
#: Rules that watch for trouble a healthy node does not have: valid, and empty here.
QUIET_ON_HEALTHY_NODE = {
    "RetinaAgentDown",
    "RetinaAgentAbsent",
    "RetinaPluginUnavailable",
    "RetinaLostEvents",
    "RetinaSeriesCapReached",
    "RetinaHarvestFailures",
}
#: Rules over adv_* metrics: test_pod_dashboards_live.py.
POD_LEVEL_RULES = {"RetinaNamespaceDropsRising", "RetinaAPIServerLatencyHigh", "RetinaAPIServerNoResponse"}


@pytest.fixture(scope="module")
def live():
    """(prometheus, workload) with the workload running for the whole module.

    The lab exists before the agent starts, and the test waits until this agent's TC programs
    sit on the lab's veths, so that no traffic is missed.
    """
    with LabNode(pod_names=("a", "b")) as node, AgentProcess() as agent:
        wait_for(lambda: attached(agent, node), 60, message="TC programs on the lab veths")
        with prometheus_for(agent) as prom, LabWorkload(node) as workload:
            # rate() needs two samples of a moving series: wait for DNS latency to move
            try:
                wait_for(
                    lambda: prom.query("rate(networkobservability_dns_latency_seconds_count[1m]) > 0"),
                    60,
                    message="DNS traffic in Prometheus",
                )
            except TimeoutError as exc:
                raise AssertionError(f"{exc}\n{diagnose(agent, workload)}") from exc
            yield prom, workload
            assert not workload.errors, workload.errors


def attached(agent, node) -> bool:
    filters = our_tc_filters(agent.proc.pid)
    return all(any(f.startswith(f"{veth}/") for f in filters) for veth in node.host_veths)


def diagnose(agent, workload) -> str:
    m = agent.scrape()
    return (
        f"workload ticks={workload.ticks} dns_ok={workload.dns_ok} "
        f"nxdomain={workload.dns_nxdomain} errors={workload.errors[-3:]}\n"
        f"agent: dns_request_count={m.value('networkobservability_dns_request_count')} "
        f"dns_latency_count={m.value('networkobservability_dns_latency_seconds_count')} "
        f"forward_count={m.value('networkobservability_forward_count')}\n"
        f"TC filters: {our_tc_filters()}\nagent log tail:\n{agent.log()[-2000:]}"
    )


def test_every_rule_is_classified():
    assert {r["alert"] for r in rules()} == FIRE_IN_LAB | QUIET_ON_HEALTHY_NODE | POD_LEVEL_RULES


@pytest.mark.parametrize("q", NODE_QUERIES, ids=lambda q: q.name)
def test_panel_query_returns_series(live, q):
    prom, _ = live
    if q.empty_when_healthy:
        evaluates(prom, q.expr)  # valid PromQL; no series is the healthy answer
        return
    result = returns_series(prom, q.expr, timeout=60)
    assert result, f"{q.name}: no series for {substitute(q.expr)}"


@pytest.mark.parametrize(
    "rule", [r for r in rules() if r["alert"] not in POD_LEVEL_RULES], ids=lambda r: r["alert"]
)
def test_rule_expression_on_the_lab_node(live, rule):
    prom, _ = live
    if rule["alert"] in QUIET_ON_HEALTHY_NODE:
        assert evaluates(prom, rule["expr"]) == [], f"{rule['alert']} fires on a healthy node"
        return
    result = returns_series(prom, rule["expr"], timeout=60)
    assert result, f"{rule['alert']}: expression returned nothing under drops and NXDOMAIN"
    assert {s["metric"].get("instance") for s in result} == {"lab-node"}


def test_prometheus_loaded_the_rules_and_evaluates_them_without_error(live):
    prom, _ = live

    def evaluated():
        found = [r for g in api(prom, "/api/v1/rules")["groups"] for r in g["rules"]]
        return (
            found
            if all(
                r.get("lastEvaluation", "").startswith("2") and not r["lastEvaluation"].startswith("0001")
                for r in found
            )
            else None
        )

    found = wait_for(evaluated, 30, message="every rule evaluated once")
    assert {r["name"] for r in found} == {r["alert"] for r in rules()}
    assert all(r["health"] == "ok" for r in found), [
        (r["name"], r.get("lastError")) for r in found if r["health"] != "ok"
    ]

    def active():
        alerts = api(prom, "/api/v1/alerts")["alerts"]
        return {a["labels"]["alertname"] for a in alerts} >= FIRE_IN_LAB

    wait_for(active, 60, message=f"alerts {FIRE_IN_LAB} pending or firing")


@pytest.mark.parametrize("path", dashboards(pod_level=False), ids=lambda p: p.stem)
def test_node_variable_lists_the_lab_node_and_cluster_may_be_absent(live, path):
    prom, _ = live
    variables = {v["name"]: v for v in json.loads(path.read_text())["templating"]["list"]}

    def values(var: str) -> list[str]:
        sel, lab = variable_selector(variables[var])
        return api(prom, f"/api/v1/label/{lab}/values", **{"match[]": substitute(sel)})

    assert wait_for(lambda: values("node"), 30, message="node values") == ["lab-node"]
    assert values("cluster") == []  # no cluster label here: the variable offers only All (.*)


def test_choosing_a_node_filters_the_panels(live):
    prom, _ = live
    q = next(q for q in NODE_QUERIES if q.title == "Packets/s by node and direction")
    assert returns_series(prom, q.expr, 30, {"node": "lab-node"})
    assert evaluates(prom, substitute(q.expr, {"node": "some-other-node"})) == []


def test_render_script_draws_every_dashboard_from_the_live_prometheus(live, tmp_path):
    prom, _ = live
    script = build.REPO / "scripts" / "render_dashboards.py"
    result = subprocess.run(
        [sys.executable, str(script), "--prometheus", prom.url, "--out", str(tmp_path), "--minutes", "1"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    pictures = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pictures == sorted(
        f"{json.loads(p.read_text())['uid']}.png" for p in build.DEFAULT_DIR.glob("*.json")
    )
    for picture in tmp_path.glob("*.png"):
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert 10_000 < picture.stat().st_size < 200_000, picture.name
