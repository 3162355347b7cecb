"""install.yml / uninstall.yml against the Kubernetes API emulator over real HTTP, with the
preflight running for real: the go/no-go gate, the skip list, and the Prometheus
additionalScrapeConfigs mode (install, conflict, uninstall restoring the Prometheus resource)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from retina_lab.kube import KubeEmulator
from tests.installer.ansible_run import PLAYBOOKS, REPO, localhost_inventory, run_playbook
from tests.kube_fixtures import (
    custom_resource_definition,
    kube_emulator,  # noqa: F401 - pytest fixture
)

CENTOS7 = REPO / "tests" / "preflight" / "hosts" / "centos7"
MANAGED = "app.kubernetes.io/managed-by"
MONITORING_NS = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "monitoring"}}

PROMETHEUS_CRD = custom_resource_definition("monitoring.coreos.com", "Prometheus", "prometheuses")


def seed_prometheus(kube: KubeEmulator, spec: dict[str, Any]) -> dict[str, Any]:
    """The prometheus-operator's CRD, the monitoring namespace, and Prometheus ``monitoring/k8s``."""
    prometheus = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "Prometheus",
        "metadata": {"name": "k8s", "namespace": "monitoring"},
        "spec": spec,
    }
    kube.seed([PROMETHEUS_CRD, MONITORING_NS])
    kube.seed([prometheus])
    return prometheus


def ours(kube: KubeEmulator) -> list[str]:
    """Every object in the emulator carrying the installer's managed-by label, as kind/ns/name."""
    found = []
    for kind in (
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "Service",
        "DaemonSet",
        "Deployment",
    ):
        for obj in kube.objects(kind):
            if obj["metadata"].get("labels", {}).get(MANAGED) == "retina-installer":
                found.append(f"{kind}/{obj['metadata'].get('namespace', '-')}/{obj['metadata']['name']}")
    return sorted(found)


def two_node_inventory(tmp_path: Path) -> Path:
    """This machine, plus a CentOS 7 node audited from its fixture tree (kernel 3.10, no BTF)."""
    inventory = localhost_inventory(tmp_path)
    data = json.loads(inventory.read_text())
    data["all"]["hosts"]["centos7"] = {
        "ansible_connection": "local",
        "ansible_python_interpreter": data["all"]["hosts"]["localhost"]["ansible_python_interpreter"],
        "preflight_root": str(CENTOS7),
    }
    inventory.write_text(json.dumps(data))
    return inventory


def install(kube: KubeEmulator, tmp_path: Path, inventory: Path, **extra: Any):  # noqa: ANN201
    return run_playbook(
        PLAYBOOKS / "install.yml",
        tmp_path,
        # The emulator runs no DaemonSet controller: no rollout to wait for (tests/e2e waits for real ones).
        {
            "retina_become": False,
            "retina_rollout_wait": False,
            "prometheus_helm_values_path": str(tmp_path / "values.yaml"),
            **extra,
        },
        inventory=inventory,
        env={"KUBECONFIG": str(kube.kubeconfig_path)},
    )


@pytest.mark.slow
def test_failing_node_stops_the_install_until_skipped(
    kube_emulator: KubeEmulator,  # noqa: F811
    tmp_path: Path,
) -> None:
    inventory = two_node_inventory(tmp_path)
    proc = install(kube_emulator, tmp_path, inventory)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    # the table names both nodes with their verdicts, the gate names the node and its failures
    assert "centos7" in output and "3.10.0" in output, output[-4000:]
    assert "Preflight failed on centos7" in output and "kernel_version" in output, output[-4000:]
    assert "Nothing was installed" in output
    assert ours(kube_emulator) == [], "objects were created although the preflight failed"

    proc = install(kube_emulator, tmp_path, inventory, preflight_skip_nodes=["centos7"])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "centos7 (skipped)" in proc.stdout
    installed = ours(kube_emulator)
    assert "DaemonSet/retina-system/retina-agent" in installed
    assert "Namespace/-/retina-system" in installed


@pytest.mark.slow
def test_additional_scrape_config_mode_and_uninstall(
    kube_emulator: KubeEmulator,  # noqa: F811
    tmp_path: Path,
) -> None:
    prometheus = seed_prometheus(kube_emulator, {"replicas": 1, "serviceMonitorSelector": {}})
    before = ours(kube_emulator)
    options = {"prometheus_mode": "additional_scrape_config", "agent_operator_enabled": False}

    proc = install(kube_emulator, tmp_path, localhost_inventory(tmp_path), **options)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    patched = kube_emulator.objects("Prometheus", "monitoring")[0]
    assert patched["spec"]["additionalScrapeConfigs"] == {
        "name": "retina-additional-scrape-configs",
        "key": "retina-scrape-configs.yaml",
    }
    secrets = [s["metadata"]["name"] for s in kube_emulator.objects("Secret", "monitoring")]
    assert secrets == ["retina-additional-scrape-configs"]
    assert not kube_emulator.objects("Deployment", "retina-system"), "operator disabled, yet deployed"

    proc = run_playbook(
        PLAYBOOKS / "uninstall.yml", tmp_path, options, env={"KUBECONFIG": str(kube_emulator.kubeconfig_path)}
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert ours(kube_emulator) == before
    restored = kube_emulator.objects("Prometheus", "monitoring")[0]
    assert restored["spec"] == prometheus["spec"]
    assert "retina.sh/additional-scrape-configs" not in restored["metadata"].get("annotations", {})


def test_prometheus_reading_another_secret_is_left_alone(
    kube_emulator: KubeEmulator,  # noqa: F811
    tmp_path: Path,
) -> None:
    prometheus = seed_prometheus(
        kube_emulator, {"additionalScrapeConfigs": {"name": "team-jobs", "key": "jobs.yaml"}}
    )
    proc = run_playbook(
        REPO / "tests" / "installer" / "playbooks" / "prometheus.yml",
        tmp_path,
        {"prometheus_mode": "additional_scrape_config"},
        env={"KUBECONFIG": str(kube_emulator.kubeconfig_path)},
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert "team-jobs" in output and "prometheus_mode=helm_values" in output, output[-3000:]
    assert kube_emulator.objects("Prometheus", "monitoring")[0]["spec"] == prometheus["spec"]
    assert kube_emulator.objects("Secret", "monitoring") == []


def test_check_mode_changes_nothing(kube_emulator: KubeEmulator, tmp_path: Path) -> None:  # noqa: F811
    options = {"retina_become": False, "prometheus_helm_values_path": str(tmp_path / "values.yaml")}
    proc = run_playbook(
        PLAYBOOKS / "install.yml",
        tmp_path,
        options,
        inventory=localhost_inventory(tmp_path),
        check=True,
        env={"KUBECONFIG": str(kube_emulator.kubeconfig_path)},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "would create ServiceAccount/retina-agent" in proc.stdout
    assert ours(kube_emulator) == []
    assert not (tmp_path / "values.yaml").exists()
