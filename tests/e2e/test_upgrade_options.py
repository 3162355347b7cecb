"""agent_max_unavailable: rendered into the DaemonSet's RollingUpdate as the API wants it (a
count as an int, a percentage as a string), refused with a message naming the option when it is
neither; and the node runner's DaemonSet controller reads it as the DaemonSet controller does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from retina_lab.noderunner.controllers import max_unavailable
from tests.installer.ansible_run import TEST_PLAYBOOKS, run_playbook


def render_daemonset(tmp_path: Path, **options: Any) -> tuple[int, str, dict[str, Any] | None]:
    out = tmp_path / "out"
    proc = run_playbook(TEST_PLAYBOOKS / "render.yml", tmp_path, {"manifest_dir": str(out), **options})
    for path in sorted((out / "agent").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "DaemonSet":
                return proc.returncode, proc.stdout + proc.stderr, doc
    return proc.returncode, proc.stdout + proc.stderr, None


@pytest.mark.parametrize(("value", "rendered"), [(None, 1), (3, 3), ("2", 2), ("25%", "25%")])
def test_max_unavailable_is_rendered_as_the_api_wants_it(tmp_path: Path, value: Any, rendered: Any) -> None:
    options = {} if value is None else {"agent_max_unavailable": value}
    code, output, ds = render_daemonset(tmp_path, **options)
    assert code == 0 and ds is not None, output[-3000:]
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": rendered},
    }


@pytest.mark.parametrize("value", [0, "0", "150%", "one", "-1"])
def test_a_bad_max_unavailable_stops_before_anything_names_the_option(tmp_path: Path, value: Any) -> None:
    code, output, ds = render_daemonset(tmp_path, agent_max_unavailable=value)
    assert code != 0 and ds is None
    assert "agent_max_unavailable:" in output and "e.g. 1, 3 or 25%" in output, output[-3000:]


def _ds(value: Any) -> dict[str, Any]:
    strategy = {"type": "RollingUpdate"} if value is None else {"rollingUpdate": {"maxUnavailable": value}}
    return {"spec": {"updateStrategy": strategy}}


@pytest.mark.parametrize(
    ("value", "desired", "count"),
    [(None, 5, 1), (2, 5, 2), ("25%", 5, 2), ("10%", 5, 1), ("100%", 3, 3), ("1%", 1, 1)],
)
def test_node_runner_reads_max_unavailable_like_the_daemonset_controller(
    value: Any, desired: int, count: int
) -> None:
    # percentages round up (pkg/controller/daemon: intstr.GetScaledValueFromIntOrPercent(..., true))
    assert max_unavailable(_ds(value), desired) == count
