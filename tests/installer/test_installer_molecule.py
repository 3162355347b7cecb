"""The molecule scenario (molecule/default) end to end: preflight for real on this machine,
install.yml into the Kubernetes API emulator, idempotence, verify, uninstall back to the
snapshot, emulator stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.installer.ansible_run import REPO, VENV_BIN, ansible_env


def _scenario_emulators() -> set[int]:
    """Running emulators of the scenario: pid files whose process is emulator.py serve."""
    pids = set()
    for pid_file in Path.home().glob(".ansible/tmp/molecule.*.default/kube/pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text())
            if b"emulator.py\0serve" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.add(pid)
    return pids


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_molecule_default_scenario() -> None:
    before = _scenario_emulators()
    env = ansible_env(PY_COLORS="0", NO_COLOR="1")
    env.pop("ANSIBLE_COLLECTIONS_PATH")  # molecule.yml sets it, as a user running molecule gets it
    try:
        proc = subprocess.run(
            [str(VENV_BIN / "molecule"), "test", "--scenario-name", "default"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=840,
            check=False,
        )
    finally:
        # cleanup.yml stops the emulator; should molecule itself die, stop the one this run started
        for pid in _scenario_emulators() - before:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-8000:]
    assert "Executed: Failed" not in output, output[-8000:]
    assert "uninstall restored all" in output, output[-8000:]
    assert _scenario_emulators() - before == set(), "cleanup.yml left the emulator running"
