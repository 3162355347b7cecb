"""The kernel matrix for the tests: kernels booted once per session, results shared by tests.

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
from retina_kernels.matrix import DEFAULT_CACHE, Prepared, prepare, run_kernel
from retina_kernels.report import summarize

CACHE = Path(os.environ.get("RETINA_KERNELS_CACHE", DEFAULT_CACHE))


def _need_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("booting kernels needs root (debootstrap, chroot, depmod)")
    missing = [t for t in ("qemu-system-x86_64", "debootstrap", "mke2fs", "debugfs", "depmod")
               if shutil.which(t) is None]
    assert not missing, f"missing {missing}: run ./scripts/setup.sh"


@pytest.fixture(scope="session")
def prepared() -> Prepared:
    _need_tools()
    return prepare(CACHE, KERNELS["6.1"])


@pytest.fixture(scope="session")
def booted(prepared: Prepared, tmp_path_factory: pytest.TempPathFactory):
    """``booted(name)`` -> (guest result, summary); each kernel boots at most once a session."""
    runs: dict[str, tuple[dict, dict]] = {}

    def boot(name: str) -> tuple[dict, dict]:
        if name not in runs:
            out = tmp_path_factory.mktemp(f"kernel-{name}")
            result = run_kernel(KERNELS[name], prepared, CACHE, out)
            runs[name] = (result, summarize(result))
        return runs[name]

    return boot
