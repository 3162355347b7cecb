"""Run tcpdump: one process per interface, stopped at the duration or the size limit.

tcpdump is always started with an argument list (never a shell) and the filter expression as
one argument. The expression is compiled first with ``tcpdump -d`` so that a bad filter fails
before anything is captured. This module watches the files tcpdump writes and stops every
tcpdump (SIGINT, which makes it flush and print its counters) when the first limit is hit:
``--duration``, ``--max-size`` (sum over all files), or a stop request (SIGTERM to the worker).

A tcpdump that dies mid-capture (out of memory, the interface gone) ends the capture for every
interface; what was captured so far is kept and returned (``CaptureResult.problem`` says what
happened, and ``INCOMPLETE_NOTE`` in the work directory says it inside the tarball).
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from retina_capture.filters import FilterError

log = logging.getLogger(__name__)

MB = 1_000_000  # tcpdump's -C unit, used for --max-size too
POLL_SECONDS = 0.05
KERNEL_BUFFER_KIB = 8192  # -B: a larger ring than tcpdump's 2 MiB default, fewer drops
# libpcap hands packets over in blocks, a block at the latest 1 s after its first packet;
# SIGINT loses a block not yet handed over. So after deciding to stop, wait this long before
# SIGINT. (--immediate-mode would avoid it but dropped a quarter of a 100k pps flood here.)
DRAIN_SECONDS = 1.1
#: Written into the capture's directory (so into its tarball) when the capture ended early.
INCOMPLETE_NOTE = "CAPTURE-INCOMPLETE.txt"


class CaptureError(RuntimeError):
    """tcpdump could not start or failed while capturing."""


def tcpdump_binary() -> str:
    path = shutil.which("tcpdump") or next(
        (p for p in ("/usr/bin/tcpdump", "/usr/sbin/tcpdump") if Path(p).exists()), None
    )
    if path is None:
        raise CaptureError("tcpdump not found; install the Debian package 'tcpdump'")
    return path


def validate_expression(expr: str, interface: str, flag: str = "--tcpdump-filter") -> None:
    """Compile ``expr`` for ``interface`` with ``tcpdump -d``; raise FilterError on failure."""
    argv = [tcpdump_binary(), "-d", "-i", interface]
    if expr:
        argv.append(expr)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        detail = (
            " ".join(line.strip() for line in proc.stderr.splitlines() if not line.startswith("Warning"))
            or f"exit {proc.returncode}"
        )
        if "No such device" in detail or "doesn't exist" in detail:
            raise FilterError(f"--interfaces: {interface!r}: {detail}")
        if "permission" in detail.lower() or "not permitted" in detail.lower():
            raise CaptureError(
                f"tcpdump may not capture on {interface!r}: {detail} (the "
                "capture needs CAP_NET_RAW and CAP_NET_ADMIN)"
            )
        raise FilterError(f"{flag}: tcpdump rejects the filter {expr!r}: {detail}")


def tcpdump_argv(interface: str, path: Path, expr: str, packet_size: int, file_size_mb: int) -> list[str]:
    """The tcpdump command for one interface (``-Z root``: rotated files are opened after
    tcpdump would otherwise have dropped to the ``tcpdump`` user)."""
    argv = [
        tcpdump_binary(),
        "-i",
        interface,
        "-n",
        "-Z",
        "root",
        "-B",
        str(KERNEL_BUFFER_KIB),
        "-s",
        str(packet_size),
        "-w",
        str(path),
    ]
    if file_size_mb > 0:
        argv += ["-C", str(file_size_mb)]
    if expr:
        argv.append(expr)
    return argv


@dataclass
class TcpdumpStats:
    captured: int | None = None
    received: int | None = None
    dropped_by_kernel: int | None = None
    dropped_by_interface: int | None = None


_STAT = re.compile(r"^(\d+) packets? (captured|received by filter|dropped by kernel|dropped by interface)")
_STAT_FIELD = {
    "captured": "captured",
    "received by filter": "received",
    "dropped by kernel": "dropped_by_kernel",
    "dropped by interface": "dropped_by_interface",
}


@dataclass
class Tcpdump:
    """One running tcpdump and what it printed."""

    interface: str
    path: Path
    proc: subprocess.Popen
    ready: threading.Event = field(default_factory=threading.Event)
    lines: list[str] = field(default_factory=list)
    stats: TcpdumpStats = field(default_factory=TcpdumpStats)
    reader: threading.Thread | None = None

    def read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.rstrip()
            self.lines.append(line)
            if line.startswith("tcpdump: listening on"):
                self.ready.set()
            m = _STAT.match(line)
            if m:
                setattr(self.stats, _STAT_FIELD[m.group(2)], int(m.group(1)))

    def index(self, path: Path) -> int:
        """0 for ``x.pcap``, N for ``x.pcapN``."""
        return int(path.name[len(self.path.name) :] or 0)

    def overflowed(self, overflow: int) -> bool:
        return self.path.with_name(f"{self.path.name}{overflow}").exists()

    def files(self) -> list[Path]:
        """The file and its rotations (``x.pcap``, ``x.pcap1``, ``x.pcap2`` ...)."""
        found = [
            p
            for p in self.path.parent.glob(self.path.name + "*")
            if p.name == self.path.name or p.name[len(self.path.name) :].isdigit()
        ]
        return sorted(found, key=self.index)


@dataclass
class CaptureResult:
    files: list[Path]
    stop_reason: str  # "duration", "max-size", "stopped"
    started: float  # time.time()
    stopped: float
    stats: dict[str, TcpdumpStats]
    problem: str | None = None  # why the capture is incomplete (a tcpdump died), None if it is not

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.files)


def _files_size(runs: list[Tcpdump]) -> int:
    total = 0
    for run in runs:
        for p in run.files():
            with contextlib.suppress(FileNotFoundError):
                total += p.stat().st_size
    return total


def run_capture(
    *,
    interfaces: list[str],
    expr: str,
    workdir: Path,
    stem: str,
    duration: float,
    max_size_mb: int,
    packet_size: int,
    file_count: int,
    stop: threading.Event | None = None,
    env: dict[str, str] | None = None,
) -> CaptureResult:
    """Capture until the first limit; return the pcap files and tcpdump's counters."""
    stop = stop or threading.Event()
    max_bytes = max_size_mb * MB
    # tcpdump -C closes a file once it passed the size and opens x.pcap1, x.pcap2 ...; the file
    # numbered `overflow` (one past the last wanted) appearing means the size limit was reached,
    # to the packet. Polling the total size covers several interfaces sharing one limit.
    file_size_mb = max(1, max_size_mb // file_count) if file_count > 0 else max_size_mb
    overflow = file_count if file_count > 0 else 1
    runs: list[Tcpdump] = []
    try:
        for iface in interfaces:
            label = re.sub(r"[^A-Za-z0-9._-]", "_", iface)
            path = workdir / f"{stem}-{label}.pcap"
            argv = tcpdump_argv(iface, path, expr, packet_size, file_size_mb)
            log.debug("starting %s", argv)
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                env=env or {"LANG": "C"},
                start_new_session=True,
            )
            run = Tcpdump(iface, path, proc)
            run.reader = threading.Thread(target=run.read_stderr, daemon=True, name=f"tcpdump-{iface}")
            run.reader.start()
            runs.append(run)
        deadline = time.monotonic() + 30
        for run in runs:
            while not run.ready.wait(POLL_SECONDS):
                if run.proc.poll() is not None or time.monotonic() > deadline:
                    raise CaptureError(
                        f"tcpdump on {run.interface} did not start: " + " ".join(run.lines[-3:])
                    )
        started_wall, started = time.time(), time.monotonic()
        log.info(
            "capture started on %s (duration %.1fs, max size %d MB)%s",
            ", ".join(interfaces),
            duration,
            max_size_mb,
            f", filter: {expr}" if expr else "",
        )
        reason, problem = "", None
        while not reason:
            if stop.wait(POLL_SECONDS):
                reason = "stopped"
            elif time.monotonic() - started >= duration:
                reason = "duration"
            elif _files_size(runs) >= max_bytes or any(r.overflowed(overflow) for r in runs):
                reason = "max-size"
            elif any(r.proc.poll() is not None for r in runs):
                dead = next(r for r in runs if r.proc.poll() is not None)
                if dead.reader is not None:
                    dead.reader.join(timeout=5)  # its last words on stderr
                reason = "tcpdump-exited"
                problem = (
                    f"tcpdump on {dead.interface} exited early ({dead.proc.returncode}) after "
                    f"{time.monotonic() - started:.1f}s: " + " ".join(dead.lines[-3:])
                )
                log.error("%s; keeping the packets captured so far", problem)
        stopped = time.time()
        log.info(
            "capture stopped (%s) after %.1fs; letting tcpdump drain its buffers",
            reason,
            time.monotonic() - started,
        )
        time.sleep(DRAIN_SECONDS)
    finally:
        _stop_all(runs)
    for run in runs:  # packets past the limit went to overflow files: drop them
        for p in run.files():
            if run.index(p) >= overflow:
                p.unlink()
    files = [p for run in runs for p in run.files()]
    result = CaptureResult(
        files=files,
        stop_reason=reason,
        started=started_wall,
        stopped=stopped,
        stats={r.interface: r.stats for r in runs},
        problem=problem,
    )
    if problem is not None:
        (workdir / INCOMPLETE_NOTE).write_text(
            f"This capture is incomplete: {problem}.\n"
            f"It covers {stopped - started_wall:.1f}s of the {duration:.1f}s asked for; the pcap files "
            "hold every packet captured until then.\n"
        )
    for run in runs:
        s = run.stats
        log.info(
            "tcpdump on %s: %s packets captured, %s received by filter, %s dropped by kernel",
            run.interface,
            s.captured,
            s.received,
            s.dropped_by_kernel,
        )
    log.info("capture size %d bytes in %d file(s)", result.size, len(files))
    return result


def _stop_all(runs: list[Tcpdump]) -> None:
    """SIGINT every tcpdump (it flushes and prints counters), then wait; kill stragglers."""
    for run in runs:
        if run.proc.poll() is None:
            run.proc.send_signal(signal.SIGINT)
    for run in runs:
        try:
            run.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            run.proc.kill()
            run.proc.wait(timeout=5)
    for run in runs:  # the readers end at EOF, after tcpdump's counter lines
        if run.reader is not None:
            run.reader.join(timeout=5)
