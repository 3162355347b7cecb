"""CPU time in BPF programs from perf's samples, without run-time accounting.

Run-time accounting (``BPF_ENABLE_STATS``) times every program run with two clock reads; on a
VM those reads cost more than a small program itself (the empty program's ~50 ns per run in
bench/datapath.py, and the "run-time accounting on/off" row), so it inflates what it measures.
perf's ``cpu-clock`` samples of the traffic's CPU, with call stacks, cost the programs nothing:
a sample whose innermost frames include one of our programs (the program itself or a helper it
called, such as a hash map lookup) is CPU time spent for that program. Charged per state
window of a benchmark phase (perf records with CLOCK_MONOTONIC timestamps, the clock of
``time.monotonic``) and divided by the packets of those windows: nanoseconds per packet.

A sampled figure is an estimate (a few hundred samples in our programs per phase: a few percent
of error); it is the cross-check of the accounted figure, not its replacement.
"""

from __future__ import annotations

import bisect
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

#: How many of a sample's innermost frames are looked at: a program's helpers (map lookups,
#: hashing, ring buffer) are at most a few calls deep.
INNERMOST_FRAMES = 6

#: What each label charges: JIT-ed programs are named bpf_prog_<tag>_<function name>.
PROGRAMS = {
    "tc": re.compile(r"^bpf_prog_[0-9a-f]+_dp_(ingress|egress)$"),
    "tracepoint": re.compile(r"^bpf_prog_[0-9a-f]+_on_\w+$"),
    "retina_design": re.compile(r"^bpf_prog_[0-9a-f]+_retina_\w+$"),
    "empty": re.compile(r"^bpf_prog_[0-9a-f]+_empty$"),  # the floor (bench/bpf/empty.c)
}


class KernelSamples:
    """``perf record`` of one CPU over a benchmark phase; ``charge`` splits it by window."""

    def __init__(self, cpu: int, frequency: int = 2000) -> None:
        self.cpu = cpu
        self.frequency = frequency
        self.folder = Path(tempfile.mkdtemp(prefix="retina-bench-perf-"))
        self.path = self.folder / "perf.data"
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("perf") is not None

    def start(self, timeout: float = 10) -> None:
        argv = ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(self.frequency), "-C", str(self.cpu)]
        argv += ["-g", "-k", "CLOCK_MONOTONIC", "-o", str(self.path)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # recording once perf has written its header
        deadline = time.monotonic() + timeout
        while not (self.path.exists() and self.path.stat().st_size > 0):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.stop()
                raise RuntimeError(f"perf record did not start: {err.strip()[-300:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def samples(self) -> list[tuple[float, int, str | None]]:
        """(time, period in ns, the label of the program it is charged to, or None), by time."""
        script = subprocess.run(
            [
                "perf",
                "script",
                "-i",
                str(self.path),
                "-F",
                "time,period,ip,sym",
                "--max-stack",
                str(INNERMOST_FRAMES),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        found = []
        for block in script.split("\n\n"):
            lines = block.strip("\n").splitlines()
            if not lines:
                continue
            head = lines[0].split()
            if len(head) < 2 or not head[0].endswith(":"):
                continue
            label = None
            for frame in lines[1:]:
                parts = frame.split()
                symbol = parts[1] if len(parts) > 1 else ""
                label = next((k for k, pattern in PROGRAMS.items() if pattern.match(symbol)), None)
                if label:
                    break
            found.append((float(head[0].rstrip(":")), int(head[1]), label))
        found.sort()
        return found

    def charge(self, windows: dict[str, list[dict]]) -> dict[str, dict]:
        """Per state: ns per packet of each label over that state's windows (each window a dict
        with ``t0``, ``t1`` and ``packets``), and how many samples that rests on."""
        spans = sorted((w["t0"], w["t1"], state) for state, ws in windows.items() for w in ws)
        starts = [s[0] for s in spans]
        ns: dict[str, dict[str, int]] = {state: {} for state in windows}
        counted: dict[str, dict[str, int]] = {state: {} for state in windows}
        for t, period, label in self.samples():
            if label is None:
                continue
            i = bisect.bisect_right(starts, t) - 1
            if i < 0 or t > spans[i][1]:
                continue  # between windows (entering, leaving, settling)
            state = spans[i][2]
            ns[state][label] = ns[state].get(label, 0) + period
            counted[state][label] = counted[state].get(label, 0) + 1
        out = {}
        for state, ws in windows.items():
            packets = sum(w["packets"] for w in ws)
            out[state] = {
                "ns_per_packet": {k: round(v / packets, 1) for k, v in sorted(ns[state].items())}
                if packets
                else {},
                "samples": counted[state],
            }
        return out

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
