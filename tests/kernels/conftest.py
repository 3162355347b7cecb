"""The kernel matrix for the tests: 6.1 and 5.10 booted once per session, side by side.

Part of the default test run (scripts/test.sh, CI). The kernel packages, the root file system
and the disks are cached outside the clone (``RETINA_KERNELS_CACHE``, default
/var/cache/retina-kernels), so later runs on the same machine reuse them; a fresh machine builds
everything once (debootstrap included; docs/kernels.md gives the cold and warm times). The
tests skip only where the machine cannot boot them: not root, no qemu, or Debian's mirror out
of reach with nothing cached.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from retina_kernels.catalog import KERNELS
from retina_kernels.matrix import DEFAULT_CACHE, cannot_run, prepare, run_kernels
from retina_kernels.report import summarize

CACHE = Path(os.environ.get("RETINA_KERNELS_CACHE", DEFAULT_CACHE))
TESTED = ("6.1", "5.10")


@pytest.fixture(scope="session")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, dict]]:
    """kernel name -> (the guest's result, its summary)."""
    kernels = [KERNELS[n] for n in TESTED]
    why = cannot_run(CACHE, kernels)
    if why:
        pytest.skip(f"the kernel matrix cannot run on this machine: {why}")
    # installed by scripts/setup.sh: missing means setup did not run, a failure, not a skip
    missing = [t for t in ("debootstrap", "mke2fs", "debugfs", "depmod") if shutil.which(t) is None]
    assert not missing, f"missing {missing}: run ./scripts/setup.sh"
    prepared = prepare(CACHE, kernels)
    # RETINA_KERNELS_OUT keeps the guests' results (retina-kernel-matrix --from-results reports them)
    out = Path(os.environ.get("RETINA_KERNELS_OUT") or tmp_path_factory.mktemp("kernels"))
    # two guests side by side keep a 2-core machine busy; a shared machine can ask for one at a time
    parallel = int(os.environ.get("RETINA_KERNELS_PARALLEL", "2"))
    results = run_kernels(kernels, prepared, CACHE, out, parallel=parallel)
    return {name: (result, summarize(result)) for name, result in results.items()}
