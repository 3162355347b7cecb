"""One kernel of the matrix, end to end: fetch, disks, boot, collect.

Per kernel the guest gets three virtio disks: the shared root file system (vda, a throw-away
snapshot per boot), the unpacked kernel package (vdb, read-only; its modules carry ``build``
and ``source`` links to the guest's 6.1 headers, as scripts/setup.sh links them on the host)
and an empty results disk (vdc), read back afterwards with ``debugfs rdump`` (no mount).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .catalog import Kernel
from .debian import Suite, unpack
from .initramfs import build_initramfs
from .kernel import KernelTree, fetch_kernel
from .qemu import boot, pick_accel
from .rootfs import EXT4_OPTIONS, make_ext4, rootfs_image

#: Outside any clone, so CI's fresh clones on this machine reuse it.
DEFAULT_CACHE = Path("/var/cache/retina-kernels")
#: How long one guest may run (boot, preflight, bcc compiling every plugin under TCG, the lab).
BOOT_TIMEOUT = 5400.0
#: A guest whose console stays silent this long is hung (while the agent starts it prints the
#: agent's log or a heartbeat each minute; preflight, bcc import included, is the longest quiet
#: stretch).
STALL = 900.0


@dataclass
class Prepared:
    """What every kernel's boot shares: the root disk, its headers, busybox, the accelerator."""

    rootfs: Path
    headers: str
    busybox: Path
    accel: tuple[str, ...]
    seconds: float


def prepare(cache: Path, probe_kernel: Kernel, log=print) -> Prepared:
    started = time.monotonic()
    suite = Suite("bookworm", cache)
    suite.update(log=log)
    busybox = unpack(suite.download("busybox-static", log=log), cache / "busybox") / "bin" / "busybox"
    rootfs, headers = rootfs_image(cache, log=log)
    tree = fetch_kernel(probe_kernel, cache, log=log)
    accel = pick_accel(tree.vmlinuz, busybox, cache, log=log)
    return Prepared(rootfs, headers, busybox, accel, time.monotonic() - started)


def kernel_disk(tree: KernelTree, headers: str, cache: Path) -> Path:
    """The unpacked package as an ext4 image, with build/source links to the guest's headers."""
    image = cache / "disks" / f"{tree.package}--{headers}.ext4"
    if image.exists():
        return image
    image.parent.mkdir(parents=True, exist_ok=True)
    for link, target in (
        ("build", f"/usr/src/{headers}"),
        ("source", f"/usr/src/{headers.removesuffix('-amd64')}-common"),
    ):
        path = tree.modules / link
        if path.is_symlink() or path.exists():
            path.unlink()
        path.symlink_to(target)
    return make_ext4(tree.root, image, label="retina-kernel", spare=16 << 20)


def make_results_disk(image: Path) -> Path:
    """An empty 256 MB ext4 image for the guest's results (made anew for each boot)."""
    image.unlink(missing_ok=True)
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", *EXT4_OPTIONS, "-L", "retina-results", str(image), "256M"],
        check=True,
        timeout=120,
        capture_output=True,
    )
    return image


def extract(image: Path, out: Path) -> None:
    """Copy the results disk's files to ``out`` with debugfs (the image is never mounted)."""
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["debugfs", "-R", f"rdump / {out}", str(image)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"debugfs rdump of {image} failed: {proc.stderr.strip()[-1000:]}")


def run_kernel(
    kernel: Kernel,
    prepared: Prepared,
    cache: Path,
    out_dir: Path,
    log=print,
    *,
    smp: int = 2,
    memory_mb: int = 2048,
    timeout: float = BOOT_TIMEOUT,
) -> dict:
    """Boot ``kernel`` with the prepared root disk; returns the guest's result plus host facts.

    The guest's files land in ``out_dir`` (result.json, agent.log, guest.log, tree/, console.log).
    """
    tree = fetch_kernel(kernel, cache, log=log)
    disk = kernel_disk(tree, prepared.headers, cache)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"retina-kernel-{kernel.name}-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        initrd = build_initramfs(tree, prepared.busybox, work / "initramfs.cpio")
        results = work / "results.ext4"
        make_results_disk(results)
        log(
            f"{kernel.name}: booting {tree.package} ({tree.version}) under "
            f"{' '.join(prepared.accel)}, {smp} vCPUs, {memory_mb} MB"
        )
        for attempt in (1, 2):  # one retry: a stalled guest (lost I/O under TCG) is not the kernel's fault
            ran = boot(
                tree.vmlinuz,
                initrd,
                [(prepared.rootfs, "snapshot"), (disk, "ro"), (results, "rw")],
                accel=prepared.accel,
                console_log=out_dir / "console.log",
                timeout=timeout,
                smp=smp,
                memory_mb=memory_mb,
                stall=STALL,
            )
            if not ran.stalled:
                break
            log(f"{kernel.name}: the guest's console was silent for {STALL:.0f}s: killed (attempt {attempt})")
            (out_dir / f"console.stalled-{attempt}.log").write_text(ran.console)
            make_results_disk(results)
        log(f"{kernel.name}: guest ran {ran.seconds:.0f}s (qemu exit {ran.returncode})")
        staging = work / "results"
        extract(results, staging)
        for item in staging.iterdir():
            target = out_dir / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            shutil.move(str(item), target)
    result_file = out_dir / "result.json"
    result = (
        json.loads(result_file.read_text())
        if result_file.exists()
        else {"error": "the guest wrote no result.json; console tail:\n" + ran.console[-3000:]}
    )
    result["host"] = {
        "kernel": kernel.name,
        "suite": kernel.suite,
        "package": tree.package,
        "package_version": tree.version,
        "headers": prepared.headers,
        "accel": " ".join(prepared.accel),
        "smp": smp,
        "memory_mb": memory_mb,
        "boot_seconds": round(ran.seconds, 1),
        "qemu_exit": ran.returncode,
        "out_dir": str(out_dir),
    }
    result_file.write_text(json.dumps(result, indent=1))
    return result


def run_kernels(
    kernels: list[Kernel],
    prepared: Prepared,
    cache: Path,
    out: Path,
    *,
    parallel: int = 2,
    log=print,
    **options,
) -> dict[str, dict]:
    """Boot ``kernels`` (``parallel`` guests at a time: bcc compiles on one vCPU, so two guests
    keep a 2-core host busy); returns each kernel's result by name, in the order given."""
    from concurrent.futures import ThreadPoolExecutor

    for kernel in kernels:  # downloads and disks one at a time, before any guest competes
        kernel_disk(fetch_kernel(kernel, cache, log=log), prepared.headers, cache)
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = {
            k.name: pool.submit(run_kernel, k, prepared, cache, out / k.name, log, **options) for k in kernels
        }
        return {name: future.result() for name, future in futures.items()}
