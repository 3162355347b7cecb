"""The kernel matrix for the tests: 6.1 and 5.10 booted once per session, side by side.

The kernel packages, the root file system and the disks are cached outside the clone
(``RETINA_KERNELS_CACHE``, default /var/cache/retina-kernels), so later runs on the same machine
(CI's fresh clones too) reuse them; a cold cache builds everything (debootstrap included).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from retina_kernels.catalog import KERNELS
from retina_kernels.matrix import DEFAULT_CACHE, prepare, run_kernels
from retina_kernels.report import summarize

CACHE = Path(os.environ.get("RETINA_KERNELS_CACHE", DEFAULT_CACHE))
TESTED = ("6.1", "5.10")


@pytest.fixture(scope="session")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, dict]]:
    """kernel name -> (the guest's result, its summary)."""
    if os.geteuid() != 0:
        pytest.skip("booting kernels needs root (debootstrap, chroot, depmod)")
    if os.environ.get("RETINA_KERNEL_MATRIX") != "1":
        # Under TCG emulation the two guests need 20-30 minutes of bcc compiling on a quiet
        # 2-core machine (measured 887-1008 s each under load): more than CI's budget leaves.
        pytest.skip(
            "the kernel matrix boots Debian kernels under qemu for 20-30 minutes: "
            "RETINA_KERNEL_MATRIX=1 runs it here, scripts/kernel_matrix.sh runs every kernel"
        )
    missing = [
        t
        for t in ("qemu-system-x86_64", "debootstrap", "mke2fs", "debugfs", "depmod")
        if shutil.which(t) is None
    ]
    assert not missing, f"missing {missing}: run ./scripts/setup.sh"
    prepared = prepare(CACHE, KERNELS["6.1"])
    # RETINA_KERNELS_OUT keeps the guests' results (retina-kernel-matrix --from-results reports them)
    out = Path(os.environ.get("RETINA_KERNELS_OUT") or tmp_path_factory.mktemp("kernels"))
    results = run_kernels([KERNELS[n] for n in TESTED], prepared, CACHE, out)
    return {name: (result, summarize(result)) for name, result in results.items()}
