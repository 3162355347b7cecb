"""Control-host checks against a Kubernetes API emulator over real HTTP, a Grafana health endpoint,
and stand-in helm/kubectl executables (no Helm binary can be installed here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.preflight import by_id, create_crd, run_cli, write_kubeconfig

CRDS = (
    "podmonitors.monitoring.coreos.com",
    "servicemonitors.monitoring.coreos.com",
    "prometheuses.monitoring.coreos.com",
)


def fake_tool(bin_dir: Path, name: str, output: str) -> None:
    """An executable printing what `helm version --short` / `kubectl version --client -o json` print."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\ncat <<'OUT'\n{output}\nOUT\n")
    path.chmod(0o755)


@pytest.mark.parametrize(
    ("helm_version", "verdict"), [("v3.14.2+gc309b6f", "pass"), ("v3.7.2+g663a896", "fail")]
)
def test_all_control_checks(
    k8s_api: str, grafana_url: str, tmp_path: Path, helm_version: str, verdict: str
) -> None:
    for name in CRDS:
        create_crd(k8s_api, name)
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "helm", helm_version)
    fake_tool(bin_dir, "kubectl", '{"clientVersion": {"major": "1", "minor": "30", "gitVersion": "v1.30.1"}}')
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", k8s_api)
    env = dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin")
    code, report = run_cli(
        "--control-only", "--kubeconfig", str(kubeconfig), "--grafana-url", grafana_url, env=env
    )
    checks = by_id(report)
    assert checks["helm"]["verdict"] == verdict
    assert checks["kubectl"]["detail"]["client_version"] == "v1.30.1"
    assert checks["cluster"]["value"] == f"v1.30.2 at {k8s_api}"
    assert checks["kube_prometheus_stack"]["verdict"] == "pass"
    assert checks["grafana"]["verdict"] == "pass" and "10.4.2" in checks["grafana"]["value"]
    assert code == (0 if verdict == "pass" else 1)


def test_unreachable_cluster_and_grafana_fail(tmp_path: Path) -> None:
    # Port 9 on loopback: nothing listens (discard service is not installed).
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:9")
    code, report = run_cli(
        "--control-only", "--kubeconfig", str(kubeconfig), "--grafana-url", "http://127.0.0.1:9"
    )
    checks = by_id(report)
    assert checks["cluster"]["verdict"] == "fail" and checks["cluster"]["value"].startswith("unreachable")
    assert checks["kube_prometheus_stack"]["verdict"] == "skip"
    assert checks["grafana"]["verdict"] == "fail"
    assert code == 1
