"""Alert rules, the PrometheusRule, the scrape job and the monitors, checked with promtool.

Debian's Prometheus (and its promtool) is built without Kubernetes service discovery, so
``promtool check config`` cannot parse ``kubernetes_sd_configs`` here: the checks below swap
that block for ``file_sd_configs`` and validate everything else (every relabeling) for real.
test_scrape_job_live.py runs the same relabelings in a real Prometheus against a real agent.
"""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.helpers.tools import require

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = DEPLOY / "retina-alerts.rules.yml"
ALERTS = {
    "RetinaAgentDown",
    "RetinaAgentAbsent",
    "RetinaPluginUnavailable",
    "RetinaLostEvents",
    "RetinaSeriesCapReached",
    "RetinaHarvestFailures",
    "RetinaNodeDropsRising",
    "RetinaNamespaceDropsRising",
    "RetinaDNSErrorRatioHigh",
    "RetinaAPIServerLatencyHigh",
    "RetinaAPIServerNoResponse",
}


def promtool(*args: str, cwd: Path = DEPLOY) -> subprocess.CompletedProcess:
    return subprocess.run([require("promtool"), *args], capture_output=True, text=True, cwd=cwd)


def load(name: str):
    return yaml.safe_load((DEPLOY / name).read_text())


def test_promtool_check_rules_passes():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_unit_tests_fire_and_stay_quiet_for_every_alert():
    tests = DEPLOY / "tests" / "retina-alerts.test.yml"
    result = promtool("test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr
    spec = yaml.safe_load(tests.read_text())
    fired, quiet = set(), set()
    for case in spec["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fired == ALERTS, f"alerts never shown to fire: {ALERTS - fired}"
    assert quiet == ALERTS, f"alerts never shown to stay quiet: {ALERTS - quiet}"


def test_every_alert_has_severity_summary_and_description():
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_prometheusrule_carries_the_rules_file_unchanged():
    manifest = load("prometheusrule.yaml")
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["spec"] == yaml.safe_load(RULES.read_text())


def _without_kubernetes_sd(job: dict) -> dict:
    job = copy.deepcopy(job)
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    job["file_sd_configs"] = [{"files": ["targets.json"]}]
    return job


def test_debian_promtool_lacks_kubernetes_sd(tmp_path):
    """Why the checks swap the SD block: this fails on this platform, and would pass upstream."""
    result = promtool("check", "config", str(DEPLOY / "prometheus.example.yml"))
    if result.returncode == 0:
        pytest.skip("this promtool has Kubernetes SD: prometheus.example.yml checks as is")
    assert "kubernetes_sd_configs not found" in result.stdout + result.stderr


def test_example_prometheus_yml_is_valid_apart_from_kubernetes_sd(tmp_path):
    config = load("prometheus.example.yml")
    assert config["rule_files"] == ["retina-alerts.rules.yml"]
    assert config["scrape_configs"] == load("retina-pods.scrape.yaml")
    config["scrape_configs"] = [_without_kubernetes_sd(j) for j in config["scrape_configs"]]
    config["rule_files"] = [str(RULES)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = promtool("check", "config", str(tmp_path / "prometheus.yml"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_retina_pods_job_keeps_the_agent_container_and_sets_instance_to_the_node():
    (job,) = load("retina-pods.scrape.yaml")
    assert job["job_name"] == "retina-pods"
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    by_target = {r.get("target_label"): r for r in job["relabel_configs"]}
    assert by_target["instance"]["source_labels"] == ["__meta_kubernetes_pod_node_name"]
    assert "__meta_kubernetes_pod_annotation_prometheus_io_port" in by_target["__address__"]["source_labels"]
    keep = [r for r in job["relabel_configs"] if r["action"] == "keep"]
    container = next(r for r in keep if r["source_labels"] == ["__meta_kubernetes_pod_container_name"])
    assert re.fullmatch(container["regex"], "retina-agent")
    assert not re.fullmatch(container["regex"], "mount-bpffs")


def _operator_relabelings_as_prometheus(relabelings: list[dict]) -> list[dict]:
    """The operator's camelCase relabelings -> Prometheus relabel_configs (as the operator does)."""
    names = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    return [{names.get(k, k): v for k, v in r.items()} for r in relabelings]


@pytest.mark.parametrize(
    "name,endpoints", [("podmonitor.yaml", "podMetricsEndpoints"), ("servicemonitor.yaml", "endpoints")]
)
def test_monitors_select_the_agent_and_relabel_instance_to_the_node(name, endpoints, tmp_path):
    monitor = load(name)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["name"] == "retina-agent"
    assert monitor["spec"]["selector"] == {"matchLabels": {"app.kubernetes.io/name": "retina-agent"}}
    (endpoint,) = monitor["spec"][endpoints]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    relabel = _operator_relabelings_as_prometheus(endpoint["relabelings"])
    assert {
        "source_labels": ["__meta_kubernetes_pod_node_name"],
        "action": "replace",
        "target_label": "instance",
    } in relabel
    assert {"action": "replace", "target_label": "job", "replacement": "retina-pods"} in relabel
    # the relabelings as Prometheus itself parses them
    config = {
        "scrape_configs": [
            {"job_name": name, "relabel_configs": relabel, "file_sd_configs": [{"files": ["targets.json"]}]}
        ]
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = promtool("check", "config", str(tmp_path / "prometheus.yml"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_service_for_the_servicemonitor_is_a_valid_headless_service():
    service = load("service.yaml")
    kubernetes_validate.validate(service, "1.31", strict=True)
    assert service["spec"]["clusterIP"] == "None"
    assert service["metadata"]["labels"] == load("servicemonitor.yaml")["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["name"] == "metrics"
