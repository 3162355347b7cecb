"""Bad role options stop the run at argument validation, before anything is rendered or
applied, with a message that names the option."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.installer.ansible_run import TEST_PLAYBOOKS, run_playbook

CASES = {
    "unknown plugin": ({"agent_plugins": ["linuxutil", "dropreasons"]}, ["agent_plugins", "dropreasons"]),
    "negative interval": ({"agent_metrics_interval": "-10s"}, ["agent_metrics_interval", "-10s"]),
    "zero interval": ({"agent_metrics_interval": "0s"}, ["agent_metrics_interval"]),
    "namespace not a DNS label": ({"agent_namespace": "Retina_System"}, ["agent_namespace", "Retina_System"]),
    "both include and exclude": (
        {"agent_metrics_namespaces": {"include": ["default"], "exclude": ["kube-system"]}},
        ["agent_metrics_namespaces", "mutually exclusive", "include|exclude"],
    ),
    "neither include nor exclude": (
        {"agent_metrics_namespaces": {}},
        ["agent_metrics_namespaces", "include"],
    ),
    "metrics namespace not a DNS label": (
        {"agent_metrics_namespaces": {"include": ["Web"]}},
        ["agent_metrics_namespaces", "Web"],
    ),
    "port out of range": ({"agent_port": 70000}, ["agent_port"]),
    "unknown prometheus mode": (
        {"render_prometheus_mode": "servicemonitor"},
        ["prometheus_mode", "servicemonitor"],
    ),
    "unknown dashboards mode": ({"dashboards_mode": "sidecar"}, ["dashboards_mode", "sidecar"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_option_fails_validation_naming_it(tmp_path: Path, case: str) -> None:
    options, expected = CASES[case]
    out = tmp_path / "out"
    proc = run_playbook(TEST_PLAYBOOKS / "render.yml", tmp_path, {"manifest_dir": str(out), **options})
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"{case}: the run succeeded\n{output[-3000:]}"
    failed = [line for line in output.splitlines() if line.startswith(("fatal:", "[ERROR]"))]
    assert failed, output[-3000:]
    for text in expected:
        assert text in output, f"{case}: {text!r} not in the failure\n{output[-3000:]}"
    if not case.startswith(("unknown prometheus", "unknown dashboards")):
        assert not (out / "agent").exists(), f"{case}: manifests were written before validation failed"


def test_valid_options_pass(tmp_path: Path) -> None:
    options: dict[str, Any] = {
        "manifest_dir": str(tmp_path / "out"),
        "agent_metrics_interval": "1m30s",
        "agent_namespace": "observability",
        "agent_pod_level": True,
        "agent_metrics_namespaces": {"exclude": ["kube-system"]},
    }
    proc = run_playbook(TEST_PLAYBOOKS / "render.yml", tmp_path, options)
    assert proc.returncode == 0, proc.stdout[-3000:]
