"""Every metric name the dashboards and alert rules use is one the real agent exposes, and the
rules that are quiet on a healthy node fire when their trouble is real.

Panel and rule checks elsewhere evaluate queries, and the promtool unit tests
(deploy/prometheus/tests) make every rule fire on synthetic series. Neither notices a name the
agent never exposes: a misspelled name is valid PromQL that returns nothing, and a synthetic
series can carry any name. Here the names are compared with two real scrapes: the basic agent
and a pod-level agent with every plugin. Then, with a real Prometheus and the rules loaded, the
quiet rules whose trouble can be made real here become active: a plugin that cannot start
(RetinaPluginUnavailable), an agent that cannot be scraped (RetinaAgentDown), and no agent
target at all (RetinaAgentAbsent). RetinaLostEvents, RetinaHarvestFailures and
RetinaSeriesCapReached fire in the promtool unit tests; their metric names are checked here.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from retina_lab.agent import AgentProcess, free_port, wait_for
from retina_lab.cluster import NODE, seed_lab
from retina_lab.prometheus import PrometheusServer
from tests.observability.live import RULES, all_panel_queries, api, rules

NAME = re.compile(r"\b((?:controlplane_)?networkobservability_[a-zA-Z0-9_]+)")
SUFFIXES = ("", "_total", "_bucket", "_count", "_sum", "_created")
UNIT_TESTS = RULES.parent / "tests" / "retina-alerts.test.yml"


def exposed_names(text: str) -> set[str]:
    """Sample names in exposition text, plus every name a declared family may have (a counter
    with no sample yet is declared by its # TYPE line)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            family = line.split()[2]
            names.update(family + s for s in SUFFIXES)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def used_names() -> dict[str, set[str]]:
    """Metric names used by panels, rules and the rules' unit tests, with where."""
    used: dict[str, set[str]] = {}
    sources = [(q.name, q.expr) for q in all_panel_queries()]
    sources += [(f"rule {r['alert']}", r["expr"]) for r in rules()]
    for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        sources += [("promtool unit test series", s["series"]) for s in test.get("input_series", [])]
    for where, expr in sources:
        for name in NAME.findall(expr):
            used.setdefault(name, set()).add(where)
    return used


@pytest.fixture(scope="module")
def scraped(kube_emulator_module) -> set[str]:
    kube, node = kube_emulator_module
    names: set[str] = set()
    basic_plugins = ["linuxutil", "packetforward", "dropreason", "dns", "tcpretrans"]
    with AgentProcess({"enabledPlugin": basic_plugins}) as basic:
        names |= exposed_names(basic.scrape_text())
    with AgentProcess(
        {
            "enablePodLevel": True,
            "remoteContext": True,
            "enabledPlugin": ["packetparser", "dropreason", "dns", "tcpretrans", "latency"],
            "plugins": {"latency": {"apiServer": [f"127.0.0.1:{kube.port}"]}},
            "podLevel": {"kubeconfig": str(kube.kubeconfig_path), "nodeName": NODE},
        }
    ) as pod_level:
        names |= exposed_names(pod_level.scrape_text())
    return names


@pytest.fixture(scope="module")
def kube_emulator_module(tmp_path_factory):
    from retina_lab import LabNode
    from retina_lab.kube import KubeEmulator

    with KubeEmulator(workdir=tmp_path_factory.mktemp("kube")) as kube, LabNode(pod_names=("a", "b")) as node:
        seed_lab(kube, node)
        yield kube, node


def test_every_metric_name_in_panels_and_rules_is_exposed(scraped):
    used = used_names()
    assert len(used) > 20, "the name pattern found too few names: is it still right?"
    missing = {name: sorted(where) for name, where in used.items() if name not in scraped}
    assert not missing, json.dumps(missing, indent=1)


def test_a_misspelled_name_would_be_caught(scraped):
    assert "networkobservability_drop_count" in scraped
    assert "networkobservability_drops_count" not in scraped


def _active_alerts(prom: PrometheusServer) -> dict[str, dict]:
    return {a["labels"]["alertname"]: a for a in api(prom, "/api/v1/alerts")["alerts"]}


def test_quiet_rules_become_active_when_their_trouble_is_real():
    """A plugin that cannot start and a node whose agent is down, scraped by a real Prometheus
    with the shipped rules: both alerts become active (pending: each has a ``for`` of 5m)."""
    broken = {
        "enabledPlugin": ["linuxutil", "dropreason"],
        "plugins": {"dropreason": {"tracepoint": "skb:no_such_tracepoint"}},
    }
    with AgentProcess(broken) as agent:
        prom = PrometheusServer([], rule_files=[str(RULES)])
        config = yaml.safe_load((prom.workdir / "prometheus.yml").read_text())
        config["scrape_configs"][0]["static_configs"] = [
            {"targets": [f"127.0.0.1:{agent.port}"], "labels": {"instance": "lab-node"}},
            # nothing listens here: the agent of another node, down
            {"targets": [f"127.0.0.1:{free_port()}"], "labels": {"instance": "lab-node-2"}},
        ]
        (prom.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        with prom:
            alerts = wait_for(
                lambda: (
                    (a := _active_alerts(prom))
                    and {"RetinaPluginUnavailable", "RetinaAgentDown"} <= set(a)
                    and a
                ),
                90,
                1.0,
                "RetinaPluginUnavailable and RetinaAgentDown active",
            )
            unavailable = alerts["RetinaPluginUnavailable"]
            assert unavailable["labels"]["plugin"] == "dropreason"
            assert unavailable["state"] in ("pending", "firing")
            assert alerts["RetinaAgentDown"]["state"] in ("pending", "firing")
            assert alerts["RetinaAgentDown"]["labels"]["instance"] == "lab-node-2"
            assert "RetinaAgentAbsent" not in alerts


def test_agent_absent_rule_becomes_active_without_agent_targets():
    prom = PrometheusServer([], rule_files=[str(RULES)])
    config = yaml.safe_load((prom.workdir / "prometheus.yml").read_text())
    config["scrape_configs"] = []
    (prom.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    with prom:
        alerts = wait_for(
            lambda: _active_alerts(prom).get("RetinaAgentAbsent"), 60, 1.0, "RetinaAgentAbsent active"
        )
        assert alerts["state"] in ("pending", "firing")
