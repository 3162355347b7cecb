"""Run the installer's playbooks the way a user does: ``ansible-playbook`` in a subprocess.

Only the environment is prepared (the venv's ``bin`` on PATH, the repository's collection on the
collections path, no colour), so a test sees exactly what a user would see.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
COLLECTION = REPO / "collections" / "retina"
PLAYBOOKS = REPO / "playbooks"
TEST_PLAYBOOKS = Path(__file__).resolve().parent / "playbooks"
VENV_BIN = Path(sys.executable).parent

#: Kubernetes versions the installer claims; every rendered manifest is validated against each.
KUBERNETES_VERSIONS = ("1.28.0", "1.29.0", "1.30.0", "1.31.0")


def ansible_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["ANSIBLE_COLLECTIONS_PATH"] = str(PLAYBOOKS / "collections")
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["ANSIBLE_LOCALHOST_WARNING"] = "false"
    env["ANSIBLE_INVENTORY_UNPARSED_WARNING"] = "false"
    env["ANSIBLE_RETRY_FILES_ENABLED"] = "false"
    env.update(extra)
    return env


def run_playbook(
    playbook: Path,
    tmp_path: Path,
    extra_vars: dict[str, Any] | None = None,
    *,
    inventory: Path | None = None,
    env: dict[str, str] | None = None,
    check: bool = False,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """``ansible-playbook PLAYBOOK -e @vars.json``; returns the finished process (output in stdout)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    vars_file = tmp_path / f"extra-vars-{len(list(tmp_path.glob('extra-vars-*')))}.json"
    vars_file.write_text(json.dumps(extra_vars or {}))
    argv = [str(VENV_BIN / "ansible-playbook"), str(playbook), "-e", f"@{vars_file}"]
    if inventory is not None:
        argv += ["-i", str(inventory)]
    if check:
        argv.append("--check")
    return subprocess.run(
        argv,
        cwd=REPO,
        env=ansible_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def localhost_inventory(tmp_path: Path) -> Path:
    """An inventory whose only node is this machine (local connection, this venv's Python)."""
    path = tmp_path / "inventory.yml"
    path.write_text(
        json.dumps(
            {
                "all": {
                    "hosts": {
                        "localhost": {
                            "ansible_connection": "local",
                            "ansible_python_interpreter": sys.executable,
                        }
                    }
                }
            }
        )
    )
    return path
