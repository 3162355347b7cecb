"""The shipped scrape configurations, run by a real Prometheus against the real agent.

Debian's Prometheus has no Kubernetes service discovery, so a file_sd target group stands in
for it, carrying the ``__meta_kubernetes_*`` labels Kubernetes SD gives each container port of
a pod (role: pod).  Everything after discovery is the shipped configuration: the relabelings
decide which targets are scraped, at which address, with which ``instance`` and ``job``.
The pods: the agent on lab-node-1 (its annotation points at the live agent's port), the agent
on lab-node-2 (annotation points at a closed port: a node whose agent is down), the agent's
init container, an unrelated annotated pod and the operator (no scrape annotation).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from retina_lab.agent import free_port, wait_for
from retina_lab.prometheus import PrometheusServer
from tests.observability.live import RULES, api, evaluates, rules

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def pod_target(
    port: int,
    *,
    pod: str,
    node: str,
    container: str,
    annotation_port: int | None,
    init: bool = False,
    app: str = "retina-agent",
    port_name: str = "metrics",
) -> dict:
    """What Kubernetes SD (role: pod) reports for one container port of a host-network pod."""
    labels = {
        "__meta_kubernetes_namespace": "retina-system",
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_ip": "127.0.0.1",
        "__meta_kubernetes_pod_node_name": node,
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_ready": "true",
        "__meta_kubernetes_pod_container_name": container,
        "__meta_kubernetes_pod_container_init": "true" if init else "false",
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": app,
        "__meta_kubernetes_pod_labelpresent_app_kubernetes_io_name": "true",
    }
    if annotation_port is not None:
        labels["__meta_kubernetes_pod_annotation_prometheus_io_scrape"] = "true"
        labels["__meta_kubernetes_pod_annotation_prometheus_io_port"] = str(annotation_port)
    address = "127.0.0.1"
    if not init:
        labels["__meta_kubernetes_pod_container_port_name"] = port_name
        labels["__meta_kubernetes_pod_container_port_number"] = str(port)
        address = f"127.0.0.1:{port}"
    return {"targets": [address], "labels": labels}


def operator_job(name: str, endpoint: dict) -> dict:
    """The parts of the operator's generated job that select the agent, plus our relabelings."""
    names = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    return {
        "job_name": name,
        "relabel_configs": [
            {
                "source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
                "action": "keep",
                "regex": "retina-agent",
            },
            {
                "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                "action": "keep",
                "regex": endpoint["port"],
            },
            *({names.get(k, k): v for k, v in r.items()} for r in endpoint["relabelings"]),
        ],
    }


def jobs() -> dict[str, dict]:
    (retina_pods,) = yaml.safe_load((DEPLOY / "retina-pods.scrape.yaml").read_text())
    pod_monitor = yaml.safe_load((DEPLOY / "podmonitor.yaml").read_text())
    service_monitor = yaml.safe_load((DEPLOY / "servicemonitor.yaml").read_text())
    return {
        "retina-pods": {k: v for k, v in retina_pods.items() if k != "kubernetes_sd_configs"},
        "podmonitor": operator_job("podmonitor", pod_monitor["spec"]["podMetricsEndpoints"][0]),
        "servicemonitor": operator_job("servicemonitor", service_monitor["spec"]["endpoints"][0]),
    }


@pytest.mark.parametrize("kind", ["retina-pods", "podmonitor", "servicemonitor"])
def test_scrape_config_sets_instance_to_the_node_and_finds_the_down_agent(agent, kind):
    closed = free_port()
    groups = [
        # host network: the container port is the agent's port (10093 in the DaemonSet)
        pod_target(
            agent.port,
            pod="retina-agent-aaaaa",
            node="lab-node-1",
            container="retina-agent",
            annotation_port=agent.port,
        ),
        pod_target(
            closed,
            pod="retina-agent-bbbbb",
            node="lab-node-2",
            container="retina-agent",
            annotation_port=closed,
        ),
        pod_target(
            0,
            pod="retina-agent-aaaaa",
            node="lab-node-1",
            container="mount-bpffs",
            annotation_port=agent.port,
            init=True,
        ),
        pod_target(
            free_port(),
            pod="web-1",
            node="lab-node-1",
            container="nginx",
            annotation_port=8080,
            app="web",
            port_name="http",
        ),
        pod_target(
            free_port(),
            pod="retina-operator-1",
            node="lab-node-1",
            container="retina-operator",
            annotation_port=None,
            app="retina-operator",
            port_name="http",
        ),
    ]
    prom = PrometheusServer([])
    (prom.workdir / "targets.json").write_text(json.dumps(groups))
    job = jobs()[kind] | {"file_sd_configs": [{"files": [str(prom.workdir / "targets.json")]}]}
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [job],
    }
    (prom.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    with prom:

        def two_scraped():
            active = api(prom, "/api/v1/targets", state="active")["activeTargets"]
            return active if len(active) == 2 and all(t["health"] != "unknown" for t in active) else None

        active = wait_for(two_scraped, 60, message="both agent targets scraped once")
        by_node = {t["labels"]["instance"]: t for t in active}
        assert set(by_node) == {"lab-node-1", "lab-node-2"}
        assert by_node["lab-node-1"]["scrapeUrl"] == f"http://127.0.0.1:{agent.port}/metrics"
        assert by_node["lab-node-1"]["health"] == "up"
        assert by_node["lab-node-2"]["health"] == "down"
        assert {t["labels"]["job"] for t in active} == {"retina-pods"} or kind == "retina-pods"
        if kind == "retina-pods":
            assert by_node["lab-node-1"]["labels"]["pod"] == "retina-agent-aaaaa"
            assert by_node["lab-node-1"]["labels"]["namespace"] == "retina-system"

        series = wait_for(
            lambda: prom.query('networkobservability_forward_count{job="retina-pods"}'),
            30,
            message="the agent's metrics under job retina-pods",
        )
        assert {s["metric"]["instance"] for s in series} == {"lab-node-1"}

        expr = {r["alert"]: r["expr"] for r in rules()}
        down = wait_for(
            lambda: evaluates(prom, expr["RetinaAgentDown"]),
            30,
            message="RetinaAgentDown's expression for lab-node-2",
        )
        assert [s["metric"]["instance"] for s in down] == ["lab-node-2"]
        assert evaluates(prom, expr["RetinaAgentAbsent"]) == []
