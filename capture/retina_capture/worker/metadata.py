"""The node's network state next to the packets, with Retina's file names.

* ``ip-resources.txt``: addresses, neighbours, rules and routes (IPv4 and IPv6)
* ``iptables-rules.txt``: ``iptables-save``, ``ip6tables-save`` and ``nft list ruleset``
* ``socket-stats.txt``: ``ss -s`` and ``ss -tapionume``
* ``proc-net/`` and ``proc-sys-net/``: copies of ``/proc/net`` and ``/proc/sys/net``

Every command runs from an argument list with a timeout; a missing tool or a failing command is
noted in the file instead of failing the capture. Copies skip unreadable files (write-only
sysctls, files the kernel refuses to read) and are bounded in size.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 20.0
MAX_COMMAND_OUTPUT = 16 * 1024 * 1024
MAX_PROC_FILE = 1024 * 1024
MAX_PROC_TOTAL = 64 * 1024 * 1024

METADATA_COMMANDS: dict[str, list[list[str]]] = {
    "ip-resources.txt": [
        ["ip", "-d", "address", "show"],
        ["ip", "neighbour", "show"],
        ["ip", "-6", "neighbour", "show"],
        ["ip", "rule", "show"],
        ["ip", "-6", "rule", "show"],
        ["ip", "route", "show", "table", "all"],
        ["ip", "-6", "route", "show", "table", "all"],
    ],
    "iptables-rules.txt": [
        ["iptables-save"],
        ["ip6tables-save"],
        ["nft", "list", "ruleset"],
    ],
    "socket-stats.txt": [
        ["ss", "-s"],
        ["ss", "-tapionume"],
    ],
}
PROC_COPIES = {"/proc/net": "proc-net", "/proc/sys/net": "proc-sys-net"}


def _run_into(fh, argv: list[str]) -> None:
    fh.write(f"### {' '.join(argv)}\n")
    if shutil.which(argv[0]) is None:
        fh.write(f"(not run: {argv[0]} is not installed)\n\n")
        return
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C"},
        )
    except subprocess.TimeoutExpired:
        fh.write(f"(timed out after {COMMAND_TIMEOUT:.0f}s)\n\n")
        return
    fh.write(proc.stdout[:MAX_COMMAND_OUTPUT].decode("utf-8", "replace"))
    if len(proc.stdout) > MAX_COMMAND_OUTPUT:
        fh.write(f"\n(truncated at {MAX_COMMAND_OUTPUT} bytes)\n")
    if proc.returncode != 0:
        fh.write(f"(exit {proc.returncode}: {proc.stderr.decode('utf-8', 'replace').strip()})\n")
    fh.write("\n")


def copy_proc_tree(src: str, dest: Path, budget: int = MAX_PROC_TOTAL) -> tuple[int, int]:
    """Copy readable regular files under ``src``; returns (files copied, bytes copied)."""
    copied = total = 0
    for root, dirs, files in os.walk(src):
        dirs.sort()
        rel = os.path.relpath(root, src)
        for name in sorted(files):
            path = os.path.join(root, name)
            try:
                with open(path, "rb") as fh:
                    data = fh.read(MAX_PROC_FILE)
            except OSError:  # write-only sysctl, EINVAL, EIO, vanished
                continue
            if total + len(data) > budget:
                log.warning("metadata: %s copy stopped at the %d-byte budget", src, budget)
                return copied, total
            target = dest / rel / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            copied += 1
            total += len(data)
    return copied, total


def collect_metadata(workdir: Path) -> list[Path]:
    """Write the metadata files into ``workdir``; returns the paths written."""
    written = []
    for filename, commands in METADATA_COMMANDS.items():
        path = workdir / filename
        with path.open("w", encoding="utf-8") as fh:
            for argv in commands:
                _run_into(fh, argv)
        written.append(path)
    for src, folder in PROC_COPIES.items():
        dest = workdir / folder
        dest.mkdir(exist_ok=True)
        files, size = copy_proc_tree(src, dest)
        log.debug("metadata: copied %d files (%d bytes) from %s", files, size, src)
        written.append(dest)
    log.info("metadata collected: %s", ", ".join(p.name for p in written))
    return written
