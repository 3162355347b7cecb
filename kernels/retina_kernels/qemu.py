"""Boot a kernel under qemu-system-x86_64: the accelerator that works here, disks, console.

KVM is tried first; on this machine (nested virtualisation) ``-cpu host`` stops with "failed
to set MSR 0x10a" and the other KVM CPU models hang silently, so a probe boots a tiny initramfs
under each candidate with a short deadline and the first that prints its marker wins. The
verdict is cached per qemu version. The guest has no network device at all (``-nic none``):
its only networks are the namespaces it builds itself.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

QEMU = "qemu-system-x86_64"
#: Accelerator candidates, best first.
ACCELS: tuple[tuple[str, ...], ...] = (
    ("-accel", "kvm", "-cpu", "host"),
    ("-accel", "kvm", "-cpu", "host,-arch-capabilities"),
    ("-accel", "tcg,thread=multi", "-cpu", "max"),
)
PROBE_MARKER = "RETINA-ACCEL-PROBE-OK"
PROBE_TIMEOUT = {"kvm": 20.0, "tcg": 180.0}


class QemuError(RuntimeError):
    pass


def qemu_version() -> str:
    if shutil.which(QEMU) is None:
        raise QemuError(f"{QEMU} is not installed: run ./scripts/setup.sh (Debian package qemu-system-x86)")
    return subprocess.run(
        [QEMU, "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.splitlines()[0]


@dataclass
class Boot:
    """One finished guest run."""

    returncode: int | None  # None: killed (deadline or stall)
    seconds: float
    console: str
    stalled: bool = False  # the console stayed silent for the stall limit: killed
    registers: str = ""  # when stalled: every vCPU's registers (qemu's ``info registers -a``)


def _monitor(path: Path, command: str, quiet: float = 3.0) -> str:
    """One command on qemu's human monitor (a unix socket); its output, read until quiet."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(quiet)
        sock.connect(str(path))
        sock.sendall(command.encode() + b"\n")
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks).decode(errors="replace")


def boot(
    vmlinuz: Path,
    initrd: Path,
    disks: list[tuple[Path, str]],
    *,
    accel: tuple[str, ...],
    console_log: Path,
    timeout: float,
    smp: int = 2,
    memory_mb: int = 2048,
    append: str = "",
    stall: float | None = None,
) -> Boot:
    """Run the guest until it powers off (or the deadline); disks are (image, mode) with mode
    ``snapshot`` (writes thrown away), ``ro`` or ``rw``, attached as vda, vdb, ..."""
    argv = [
        QEMU,
        *accel,
        "-smp",
        str(smp),
        "-m",
        str(memory_mb),
        "-kernel",
        str(vmlinuz),
        "-initrd",
        str(initrd),
        "-append",
        f"console=ttyS0 panic=-1 {append}".strip(),
        "-nic",
        "none",
        "-no-reboot",
        "-display",
        "none",
        "-serial",
        f"file:{console_log}",
    ]
    for image, mode in disks:
        opts = f"file={image},format=raw,if=virtio,cache=unsafe"
        opts += {"snapshot": ",snapshot=on", "ro": ",readonly=on", "rw": ""}[mode]
        argv += ["-drive", opts]
    started = time.monotonic()
    registers = ""
    # qemu's own output is short (an error line): a file, so no pipe can fill while we poll.
    with tempfile.TemporaryDirectory(prefix="retina-qemu-") as tmp, tempfile.TemporaryFile("w+") as qemu_out:
        # The monitor: when the guest stalls, where each vCPU is (its registers) before the kill.
        monitor = Path(tmp) / "monitor.sock"
        argv += ["-monitor", f"unix:{monitor},server=on,wait=off"]
        proc = subprocess.Popen(argv, stdout=qemu_out, stderr=subprocess.STDOUT, text=True)
        # ``stall``: a guest whose console stays silent that long is taken as hung (under TCG on
        # a loaded host a virtio completion can get lost: jbd2 then blocks for good) and killed.
        code: int | None = None
        stalled = False
        size, quiet_since = -1, time.monotonic()
        while True:
            try:
                code = proc.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            grown = console_log.stat().st_size if console_log.exists() else 0
            if grown != size:
                size, quiet_since = grown, now
            stalled = stall is not None and now - quiet_since > stall
            if stalled:
                try:
                    registers = _monitor(monitor, "info registers -a")
                except OSError as exc:
                    registers = f"(the monitor did not answer: {exc})"
            if stalled or now - started > timeout:
                proc.kill()
                proc.wait()
                break
        qemu_out.seek(0)
        out = qemu_out.read()
    console = console_log.read_text(errors="replace") if console_log.exists() else ""
    if code not in (0, None):
        console += f"\n[qemu exited {code}: {out.strip()[-1000:]}]"
    return Boot(code, time.monotonic() - started, console, stalled, registers)


def _probe_initrd(busybox: Path, out: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="retina-probe-") as tmp:
        root = Path(tmp)
        (root / "bin").mkdir()
        shutil.copy2(busybox, root / "bin" / "busybox")
        (root / "init").write_text(f"#!/bin/busybox sh\necho {PROBE_MARKER}\n/bin/busybox poweroff -f\n")
        (root / "init").chmod(0o755)
        with open(out, "wb") as f:
            subprocess.run(
                [str(busybox), "cpio", "-o", "-H", "newc"],
                input=b"bin\nbin/busybox\ninit\n",
                stdout=f,
                cwd=root,
                check=True,
                stderr=subprocess.DEVNULL,
                timeout=60,
            )
    return out


def pick_accel(vmlinuz: Path, busybox: Path, cache: Path, log=print) -> tuple[str, ...]:
    """The first accelerator that boots a guest to its init here (cached per qemu version)."""
    version = qemu_version()
    memo = cache / "accel.json"
    if memo.exists():
        saved = json.loads(memo.read_text())
        if saved.get("qemu") == version:
            return tuple(saved["accel"])
    tried = []
    with tempfile.TemporaryDirectory(prefix="retina-probe-") as tmp:
        initrd = _probe_initrd(busybox, Path(tmp) / "probe.cpio")
        for accel in ACCELS:
            result = boot(
                vmlinuz,
                initrd,
                [],
                accel=accel,
                console_log=Path(tmp) / "console.log",
                timeout=PROBE_TIMEOUT["kvm" if "kvm" in accel else "tcg"],
                memory_mb=256,
                smp=1,
                append="quiet",
            )
            ok = PROBE_MARKER in result.console
            why = "ok" if ok else ("hung" if result.returncode is None else result.console.strip()[-200:])
            tried.append({"accel": list(accel), "seconds": round(result.seconds, 1), "result": why})
            log(f"qemu: {' '.join(accel)}: {why} ({result.seconds:.1f}s)")
            if ok:
                memo.write_text(json.dumps({"qemu": version, "accel": list(accel), "tried": tried}, indent=1))
                return accel
    raise QemuError(f"no accelerator booted a guest: {tried}")
