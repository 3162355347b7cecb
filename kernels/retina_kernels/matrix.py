"""One kernel of the matrix, end to end: fetch, disks, boot, collect.

Per kernel the guest gets three virtio disks: the shared root file system (vda, a throw-away
snapshot per boot), the unpacked kernel package (vdb, read-only; no kernel headers: the agent's
BPF objects are compiled into the wheel, so the guest has none, like a node without a headers
package) and an empty results disk (vdc), read back afterwards with ``debugfs rdump`` (no mount).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .catalog import ROOTFS_SUITE, Kernel
from .debian import MIRROR, Suite, mirror_unreachable, unpack
from .initramfs import build_initramfs
from .kernel import KernelTree, fetch_kernel
from .qemu import QEMU, boot, pick_accel
from .rootfs import EXT4_OPTIONS, make_ext4, rootfs_image

#: Outside any clone, so CI's fresh clones on this machine reuse it.
DEFAULT_CACHE = Path("/var/cache/retina-kernels")
#: How long one guest may run (boot, preflight, the agent's start, the lab) under TCG on a loaded host.
BOOT_TIMEOUT = 3600.0
#: A guest whose console stays silent this long is hung: its init prints a heartbeat every 30 s
#: (guest.Progress), so only a wedged kernel (or a lost disk completion under TCG) stays quiet.
STALL = 300.0


@dataclass
class Prepared:
    """What every kernel's boot shares: the root disk, busybox, the accelerator."""

    rootfs: Path
    busybox: Path
    accel: tuple[str, ...]
    seconds: float


def cannot_run(cache: Path, kernels: list[Kernel]) -> str | None:
    """Why this machine cannot boot the matrix (None: it can). Only what no setup fixes here:
    not root, no qemu, or Debian's mirror out of reach with nothing cached to run from."""
    if os.geteuid() != 0:
        return "booting kernels needs root (debootstrap, chroot, depmod, mke2fs -d)"
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (Debian package qemu-system-x86; scripts/setup.sh installs it)"
    why = mirror_unreachable()
    if why is None:
        return None
    suites = sorted({ROOTFS_SUITE, *(k.suite for k in kernels)})
    cached = (
        all(Suite(s, cache).has_lists for s in suites)
        and any((cache / "rootfs").glob("system-*/.complete"))
        and all(_kernel_cached(k, cache) for k in kernels)
    )
    if cached:
        return None
    return (
        f"Debian's mirror {MIRROR} cannot be reached ({why}) and {cache} does not hold the "
        f"kernel packages and root file system of {', '.join(k.name for k in kernels)} yet"
    )


def _kernel_cached(kernel: Kernel, cache: Path) -> bool:
    """The kernel's package was downloaded once (of its flavour: -cloud-amd64 is not -amd64)."""
    return any(
        deb.name.split("_")[0].endswith(f"-{kernel.flavour}")
        and ("-cloud-" in deb.name) == kernel.flavour.startswith("cloud")
        for deb in Suite(kernel.suite, cache).archives.glob("linux-image-[0-9]*.deb")
    )


def _kernel_disks(kernels: list[Kernel], cache: Path, log=print) -> None:
    for kernel in kernels:
        kernel_disk(fetch_kernel(kernel, cache, log=log), cache)


def prepare(cache: Path, kernels: list[Kernel], log=print) -> Prepared:
    """Everything the boots share, built or reused: the kernels' packages and disks are fetched
    in a thread while the root file system builds (downloads beside debootstrap's CPU work)."""
    started = time.monotonic()
    suite = Suite(ROOTFS_SUITE, cache)
    suite.update(log=log)
    busybox = unpack(suite.download("busybox-static", log=log), cache / "busybox") / "bin" / "busybox"
    with ThreadPoolExecutor(max_workers=1) as pool:
        disks = pool.submit(_kernel_disks, kernels, cache, log)
        rootfs = rootfs_image(cache, log=log)
        disks.result()
    tree = fetch_kernel(kernels[0], cache, log=log)
    accel = pick_accel(tree.vmlinuz, busybox, cache, log=log)
    return Prepared(rootfs, busybox, accel, time.monotonic() - started)


def kernel_disk(tree: KernelTree, cache: Path) -> Path:
    """The unpacked package as an ext4 image, as the package installs it: no ``build`` or
    ``source`` link to headers (earlier matrices linked the 6.1 headers for bcc; removed)."""
    image = cache / "disks" / f"{tree.package}.ext4"
    if image.exists():
        return image
    image.parent.mkdir(parents=True, exist_ok=True)
    for link in ("build", "source"):
        path = tree.modules / link
        if path.is_symlink():
            path.unlink()
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
    disk = kernel_disk(tree, cache)
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
                append="nokaslr",  # System.map's addresses hold: a stalled guest's CPUs symbolized
            )
            if not ran.stalled:
                break
            where = tree.symbolize(ran.registers)
            log(
                f"{kernel.name}: the guest's console was silent for {STALL:.0f}s: killed "
                f"(attempt {attempt}); vCPUs at {'; '.join(where) or '(no registers)'}"
            )
            (out_dir / f"console.stalled-{attempt}.log").write_text(ran.console)
            (out_dir / f"registers.stalled-{attempt}.txt").write_text(
                ran.registers + "\n" + "\n".join(where) + "\n"
            )
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
    """Boot ``kernels`` (``parallel`` guests at a time: two keep a 2-core host busy); returns
    each kernel's result by name, in the order given."""
    for kernel in kernels:  # downloads and disks one at a time, before any guest competes
        kernel_disk(fetch_kernel(kernel, cache, log=log), cache)
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = {
            k.name: pool.submit(run_kernel, k, prepared, cache, out / k.name, log, **options) for k in kernels
        }
        return {name: future.result() for name, future in futures.items()}
