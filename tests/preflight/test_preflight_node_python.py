"""module_utils runs on the managed node's Python: 3.6 (CentOS 7's python3) at the oldest.

Checked statically with vermin (every machine) and, where an interpreter is installed, by running
the checks on Python 3.6 against the fixture host trees and comparing with the CLI's report.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers.preflight import COLLECTION, HOSTS, VENV_BIN, run_cli
from tests.preflight.test_preflight_ansible_module import MODULE, _old_python

MODULE_UTILS = COLLECTION / "plugins" / "module_utils" / "preflight"
NODE_PYTHON = "3.6"


def vermin(target: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "vermin"), "--no-tips", "--eval-annotations", "--violations", f"-t={target}-"]
        + [str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_module_utils_need_nothing_newer_than_python_36() -> None:
    done = vermin(NODE_PYTHON, MODULE_UTILS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_vermin_catches_a_37_feature(tmp_path: Path) -> None:
    # The check above can fail: the syntax module_utils used before (and must not use again).
    newer = "from __future__ import annotations\n\ndef f(x: str | None) -> None: ...\n"
    (tmp_path / "newer.py").write_text(newer)
    done = vermin(NODE_PYTHON, tmp_path)
    assert done.returncode != 0 and "annotations" in done.stdout


def test_module_file_parses_on_pythons_before_36() -> None:
    # No f-strings or other 3.6 syntax in the module itself, so that its version check can run.
    done = vermin("3.0", MODULE)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("tree", ["centos7", "elrepo-6.9", "ubuntu-22.04-hwe-6.5"])
def test_checks_on_a_real_python_36_match_the_cli(tree: str, tmp_path: Path) -> None:
    python36 = _old_python(NODE_PYTHON)
    if python36 is None:
        pytest.skip("no Python 3.6 on this machine (vermin above checks the syntax)")
    (tmp_path / "node_utils").symlink_to(MODULE_UTILS)  # a package name of our own, as AnsiballZ does
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import node_utils as p; "
        "report = p.run_preflight(p.PreflightOptions(root=sys.argv[2])); "
        "print(json.dumps({'python': list(sys.version_info[:2]), 'report': report}))"
    )
    done = subprocess.run(
        [python36, "-c", code, str(tmp_path), str(HOSTS / tree)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["python"] == [3, 6]
    report = out["report"]
    _, cli_report = run_cli("--root", str(HOSTS / tree))
    for key in ("checks", "plugins", "summary"):
        assert report[key] == cli_report[key], key
