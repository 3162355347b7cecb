"""A Debian kernel ready to boot: its vmlinuz, its modules (depmod'ed) and its release string.

The package is fetched once into the cache (``apt-get download``), unpacked with ``dpkg-deb -x``
and ``depmod``'ed there (Debian runs depmod in the package's postinst, which an unpacked .deb
never ran). bullseye/bookworm ship modules in /lib/modules, trixie (merged /usr) in
/usr/lib/modules; uncompressed in the former, ``.ko.xz`` in trixie.
"""

from __future__ import annotations

import bisect
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .catalog import Kernel
from .debian import Suite, unpack


@dataclass(frozen=True)
class KernelTree:
    kernel: Kernel
    package: str  # linux-image-6.1.0-50-cloud-amd64
    version: str  # the package version, 6.1.176-1
    release: str  # uname -r, 6.1.0-50-cloud-amd64
    root: Path  # the unpacked package

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def config(self) -> Path:
        return self.root / "boot" / f"config-{self.release}"

    @property
    def modules(self) -> Path:
        """/lib/modules/<release> of this kernel (wherever the package put it)."""
        for base in ("lib/modules", "usr/lib/modules"):
            if (self.root / base / self.release).is_dir():
                return self.root / base / self.release
        raise FileNotFoundError(f"{self.package} has no modules directory for {self.release}")

    @property
    def system_map(self) -> Path:
        return self.root / "boot" / f"System.map-{self.release}"

    def symbolize(self, registers: str) -> list[str]:
        """Each vCPU's instruction pointer in qemu's ``info registers -a`` as ``symbol+offset``
        (the guest boots with ``nokaslr``, so System.map's addresses are the running ones)."""
        table = []
        for line in self.system_map.read_text().splitlines():
            address, kind, name = line.split()[:3]
            if kind in "tTwW":
                table.append((int(address, 16), name))
        table.sort()
        starts = [a for a, _ in table]
        found = []
        for cpu, rip in enumerate(re.findall(r"RIP=([0-9a-f]{16})", registers)):
            address = int(rip, 16)
            i = bisect.bisect_right(starts, address) - 1
            where = f"{table[i][1]}+{address - table[i][0]:#x}" if i >= 0 else "?"
            found.append(f"CPU {cpu}: {rip} {where}")
        return found

    def config_value(self, key: str) -> str | None:
        for line in self.config.read_text().splitlines():
            if line.startswith(f"{key}="):
                return line.split("=", 1)[1]
        return None


def fetch_kernel(kernel: Kernel, cache: Path, log=print) -> KernelTree:
    """The kernel's package, downloaded, unpacked and depmod'ed under ``cache`` (once)."""
    suite = Suite(kernel.suite, cache)
    suite.update(log=log)
    package = suite.depends_of(kernel.meta_package, r"linux-image-[0-9].*")
    deb = suite.download(package, log=log)
    version = deb.name.split("_")[1].replace("%3a", ":")
    root = cache / "kernels" / package
    fresh = not (root / ".unpacked").exists()
    unpack(deb, root)
    release = package.removeprefix("linux-image-")
    tree = KernelTree(kernel, package, version, release, root)
    if fresh or not (tree.modules / "modules.dep").exists():
        base = tree.modules.parent.parent.parent  # the directory holding lib/modules
        subprocess.run(["depmod", "-b", str(base), release], check=True, timeout=300)
    return tree
