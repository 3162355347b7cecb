"""Every benchmark starts the way its docstring says: ``.venv/bin/python bench/X.py``.

The test lab (``lab/``) is not part of the installed wheel, so a benchmark that imports it must
put it on its own path; `datapath.py` and `soak.py` once forgot and ended in ModuleNotFoundError
before parsing a single flag.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# a benchmark is a script; bench/report.py is the module they share
BENCHMARKS = sorted(p.name for p in (ROOT / "bench").glob("*.py") if "__main__" in p.read_text())


@pytest.mark.parametrize("script", BENCHMARKS)
def test_benchmark_parses_its_flags_without_help_from_the_environment(script: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--help"],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
