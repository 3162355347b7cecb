"""The guest's first stage: busybox, the few modules that reach the disks, and a /init script.

Debian's kernels build virtio_pci (not in 6.12), virtio_blk and (except -cloud) ext4 as
modules, so the guest needs them before it can mount its root file system. This initramfs
loads exactly those (with their dependencies, in modules.dep order), mounts the root file
system (vda, written to a throw-away qemu snapshot), the kernel package (vdb, read-only, at
/mnt/kernel: the guest binds its modules to /lib/modules/<release>) and the results disk (vdc,
at /results), and switches root into the guest program.
"""

from __future__ import annotations

import lzma
import shutil
import subprocess
import tempfile
from pathlib import Path

from .kernel import KernelTree

#: What the first stage must load to mount ext4 from virtio disks (when not built in).
BOOT_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4")

INIT = """\
#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.load); do insmod "/modules/$m" || echo "retina-initramfs: insmod $m failed"; done
i=0
while [ ! -b /dev/vdc ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
mount -t ext4 /dev/vda /newroot || { echo "retina-initramfs: cannot mount the root disk"; poweroff -f; }
mkdir -p /newroot/mnt/kernel /newroot/results
mount -t ext4 -o ro /dev/vdb /newroot/mnt/kernel
mount -t ext4 /dev/vdc /newroot/results
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /usr/bin/env -i PATH=/opt/retina/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
  HOME=/root LANG=C.UTF-8 PYTHONUNBUFFERED=1 /opt/retina/bin/python -m retina_kernels.guest
"""


def _modules_dep(tree: KernelTree) -> dict[str, tuple[str, list[str]]]:
    """module name -> (path relative to the modules dir, its dependencies' paths)."""
    found: dict[str, tuple[str, list[str]]] = {}
    for line in (tree.modules / "modules.dep").read_text().splitlines():
        path, _, deps = line.partition(":")
        name = Path(path).name.split(".ko")[0].replace("-", "_")
        found[name] = (path, deps.split())
    return found


def load_order(tree: KernelTree, wanted: tuple[str, ...] = BOOT_MODULES) -> list[str]:
    """Module paths to insmod, dependencies first; built-in modules are left out."""
    deps = _modules_dep(tree)
    by_path = {path: d for path, d in deps.values()}
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in by_path.get(path, []):
            visit(dep)
        order.append(path)

    for name in wanted:
        if name in deps:
            visit(deps[name][0])
    return order


def build_initramfs(tree: KernelTree, busybox: Path, out: Path) -> Path:
    """An uncompressed newc cpio at ``out`` (rebuilt each time: it is a few MB, made in a second)."""
    with tempfile.TemporaryDirectory(prefix="retina-initramfs-") as tmp:
        root = Path(tmp)
        (root / "bin").mkdir()
        shutil.copy2(busybox, root / "bin" / "busybox")
        (root / "modules").mkdir()
        names = []
        for rel in load_order(tree):
            src = tree.modules / rel
            name = Path(rel).name
            if name.endswith(".xz"):
                name = name.removesuffix(".xz")
                (root / "modules" / name).write_bytes(lzma.decompress(src.read_bytes()))
            else:
                shutil.copy2(src, root / "modules" / name)
            names.append(name)
        (root / "modules.load").write_text("\n".join(names) + "\n")
        (root / "init").write_text(INIT)
        (root / "init").chmod(0o755)
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        with open(out, "wb") as f:
            subprocess.run(
                [str(busybox), "cpio", "-o", "-H", "newc"],
                input="\n".join(files).encode(),
                stdout=f,
                cwd=root,
                check=True,
                timeout=60,
                stderr=subprocess.DEVNULL,
            )
    return out
