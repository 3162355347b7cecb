"""Capture overhead: ``retina-capture`` against plain ``tcpdump -w`` on the same veth.

Part 1, drops: a bounded UDP flood from lab pod a to lab pod b, captured on pod a's host veth
by (1) plain tcpdump alone, (2) the worker alone, (3) both at once. For each: packets sent,
captured, and tcpdump's "dropped by kernel" counter (the worker logs tcpdump's counters).

Part 2, delivery: a 100 MB capture (``--max-size 100``) of random-payload packets uploaded to a
local moto S3 server: time from the end of capture to the object being uploaded, split into
metadata, packing and upload; next to it the same by hand (``tar -czf`` + boto3 upload_file).

Run as root from the repository (needs the lab, tcpdump and moto_server):

    .venv/bin/python bench/capture_overhead.py [--packets 300000] [--size 512] [--mb 100]

Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from report import write_report  # bench/report.py

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Bounded flood from inside a pod: `count` datagrams, at most `seconds`, payloads cycled.
FLOOD = r"""
import os, socket, sys, time
dst, port, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
seconds, rand = float(sys.argv[5]), sys.argv[6] == "1"
payloads = [os.urandom(size) if rand else bytes(size) for _ in range(64)]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
deadline = time.monotonic() + seconds
sent = 0
t0 = time.monotonic()
for i in range(count):
    if (i & 1023) == 0 and time.monotonic() > deadline:
        break
    try:
        s.sendto(payloads[i & 63], (dst, port))
        sent += 1
    except OSError:
        pass
print(sent, time.monotonic() - t0)
"""


def flood(pod, dst: str, count: int, size: int, seconds: float, random_payload: bool = False):
    out = pod.run(
        [
            "python3",
            "-c",
            FLOOD,
            dst,
            "9999",
            str(count),
            str(size),
            str(seconds),
            "1" if random_payload else "0",
        ],
        timeout=seconds + 30,
    )
    sent, elapsed = out.stdout.split()
    return int(sent), float(elapsed)


class Proc:
    """A background process whose stderr lines are kept with arrival times."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip()))

    def wait_for(self, text: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, line in list(self.lines):
                if text in line:
                    return t
            if self.proc.poll() is not None:
                self.reader.join(5)
                for t, line in self.lines:
                    if text in line:
                        return t
                raise RuntimeError(f"process exited before {text!r}: " + self.text())
            time.sleep(0.02)
        raise TimeoutError(text)

    def stop(self, sig=signal.SIGINT, timeout: float = 120) -> int:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.reader.join(5)
        return self.proc.returncode

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


def tcpdump_counters(text: str) -> dict[str, int]:
    out = {}
    for key, pattern in (
        ("captured", r"(\d+) packets captured"),
        ("dropped_by_kernel", r"(\d+)\s+(?:packets )?dropped by kernel"),
    ):
        m = re.findall(pattern, text)
        out[key] = int(m[-1]) if m else -1
    return out


def settle(directory: Path, timeout: float = 10) -> None:
    """Wait until the capture files under ``directory`` stop growing (ring drained), bounded."""
    last, stable_since, deadline = -1, time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        size = sum(p.stat().st_size for p in directory.rglob("*.pcap*") if p.is_file())
        if size != last:
            last, stable_since = size, time.monotonic()
        elif time.monotonic() - stable_since > 1.5:  # > libpcap's 1 s block timeout
            return
        time.sleep(0.05)


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"PATH": f"{BIN}:{os.environ['PATH']}", "LANG": "C.UTF-8", **(extra or {})}


def part1(node, packets: int, size: int, work: Path) -> list[dict]:
    a, b = node["a"], node["b"]
    flood(a, b.ip, 10, size, 5)  # resolve neighbours first
    rows = []
    for mode in ("tcpdump alone", "worker alone", "both at once"):
        d = work / mode.replace(" ", "-")
        d.mkdir()
        procs = {}
        if mode != "worker alone":
            procs["tcpdump"] = Proc(["tcpdump", "-i", a.host_veth, "-w", str(d / "plain.pcap"), "-Z", "root"])
            procs["tcpdump"].wait_for("listening on", 30)
        if mode != "tcpdump alone":
            procs["worker"] = Proc(
                [
                    str(BIN / "retina-capture"),
                    "--name",
                    "bench",
                    "--interfaces",
                    a.host_veth,
                    "--duration",
                    "10m",
                    "--max-size",
                    "2000",
                    "--host-path",
                    "out",
                    "--host-path-base",
                    str(d / "base"),
                    "--output-dir-tmp",
                    str(d / "tmp"),
                ],
                worker_env(),
            )
            procs["worker"].wait_for("capture started", 30)
        sent, elapsed = flood(a, b.ip, packets, size, 30)
        settle(d)
        for name, proc in procs.items():
            rc = proc.stop(signal.SIGINT)
            counters = tcpdump_counters(proc.text())
            rows.append(
                {
                    "mode": mode,
                    "capturer": name,
                    "sent": sent,
                    "flood_seconds": round(elapsed, 2),
                    "captured": counters["captured"],
                    "dropped_by_kernel": counters["dropped_by_kernel"],
                    "exit_code": rc,
                }
            )
    return rows


def log_time(proc: Proc, text: str) -> float:
    """Time of a worker log line from its own timestamp (ms resolution)."""
    for _, line in proc.lines:
        if text in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp()
    raise KeyError(text)


def part2(node, mb: int, work: Path) -> dict:
    import boto3

    a, b = node["a"], node["b"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = Proc([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)])
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("moto_server did not start")
            time.sleep(0.05)
        keys = {"RETINA_CAPTURE_S3_ACCESS_KEY_ID": "bench", "RETINA_CAPTURE_S3_SECRET_ACCESS_KEY": "bench"}
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        s3.create_bucket(Bucket="bench")
        d = work / "upload"
        worker = Proc(
            [
                str(BIN / "retina-capture"),
                "--name",
                "big",
                "--interfaces",
                a.host_veth,
                "--duration",
                "5m",
                "--max-size",
                str(mb),
                "--s3-bucket",
                "bench",
                "--s3-endpoint",
                f"http://127.0.0.1:{port}",
                "--s3-region",
                "us-east-1",
                "--output-dir-tmp",
                str(d / "tmp"),
            ],
            worker_env(keys),
        )
        worker.wait_for("capture started", 30)
        # 1400-byte random payloads; enough to pass the size limit, bounded in count and time
        count = int(mb * 1_000_000 / 1400 * 1.5)
        flood(a, b.ip, count, 1400, 60, random_payload=True)
        with contextlib.suppress(TimeoutError):  # normally the size limit already stopped it
            worker.wait_for("capture stopped", 10)
        rc = worker.stop(signal.SIGINT, timeout=300)
        text = worker.text()
        if rc != 0:
            raise RuntimeError("worker failed:\n" + text)
        size = int(re.search(r"capture size (\d+) bytes", text).group(1))
        t_stop = log_time(worker, "capture stopped")
        t_meta = log_time(worker, "metadata collected")
        t_pack = log_time(worker, "packed ")
        t_up = log_time(worker, "s3 output: wrote")
        tar_size = int(re.search(r"packed \S+ \((\d+) bytes\)", text).group(1))
        obj = s3.list_objects_v2(Bucket="bench")["Contents"][0]

        # By hand: plain tcpdump -w the same amount, then tar -czf and boto3 upload_file.
        h = work / "by-hand"
        h.mkdir()
        plain = Proc(
            [
                "tcpdump",
                "-i",
                a.host_veth,
                "-w",
                str(h / "plain.pcap"),
                "-Z",
                "root",
                "-c",
                str(int(size / (1400 + 42 + 16))),
            ]
        )
        plain.wait_for("listening on", 30)
        flood(a, b.ip, count, 1400, 60, random_payload=True)
        plain.stop(timeout=60)
        t0 = time.monotonic()
        subprocess.run(["tar", "-C", str(h), "-czf", str(h / "plain.tar.gz"), "plain.pcap"], check=True)
        t1 = time.monotonic()
        s3.upload_file(str(h / "plain.tar.gz"), "bench", "by-hand/plain.tar.gz")
        t2 = time.monotonic()
        return {
            "worker": {
                "capture_bytes": size,
                "tarball_bytes": tar_size,
                "object_bytes": obj["Size"],
                "metadata_s": round(t_meta - t_stop, 2),
                "pack_s": round(t_pack - t_meta, 2),
                "upload_s": round(t_up - t_pack, 2),
                "end_of_capture_to_uploaded_s": round(t_up - t_stop, 2),
            },
            "by_hand": {
                "capture_bytes": (h / "plain.pcap").stat().st_size,
                "tarball_bytes": (h / "plain.tar.gz").stat().st_size,
                "pack_s": round(t1 - t0, 2),
                "upload_s": round(t2 - t1, 2),
                "end_of_capture_to_uploaded_s": round(t2 - t0, 2),
            },
        }
    finally:
        moto.stop(signal.SIGTERM, timeout=20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=300_000, help="UDP datagrams per flood")
    parser.add_argument("--size", type=int, default=512, help="UDP payload bytes in part 1")
    parser.add_argument("--mb", type=int, default=100, help="capture size for part 2 (MB)")
    args = parser.parse_args()
    sys.path[:0] = [str(REPO / "lab")]
    from retina_lab import LabNode

    work = Path(tempfile.mkdtemp(prefix="retina-capture-bench-"))
    try:
        with LabNode(pod_names=("a", "b")) as node:
            rows = part1(node, args.packets, args.size, work)
            delivery = part2(node, args.mb, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nUDP flood pod a -> pod b, {args.size}-byte payloads, captured on pod a's host veth")
    print(f"{'mode':<15} {'capturer':<8} {'sent':>8} {'captured':>9} {'dropped':>8} {'flood s':>8}")
    for r in rows:
        print(
            f"{r['mode']:<15} {r['capturer']:<8} {r['sent']:>8} {r['captured']:>9} "
            f"{r['dropped_by_kernel']:>8} {r['flood_seconds']:>8}"
        )
    w, h = delivery["worker"], delivery["by_hand"]
    print(f"\n{args.mb} MB capture to local moto S3   {'worker':>10} {'by hand':>10}")
    for key, label in (
        ("capture_bytes", "capture bytes"),
        ("tarball_bytes", "tarball bytes"),
        ("metadata_s", "metadata s"),
        ("pack_s", "pack s"),
        ("upload_s", "upload s"),
        ("end_of_capture_to_uploaded_s", "end of capture -> uploaded s"),
    ):
        print(f"{label:<34} {w.get(key, '-'):>10} {h.get(key, '-'):>10}")
    write_report("capture_overhead", {"args": vars(args), "drops": rows, "delivery": delivery})
    return 0


if __name__ == "__main__":
    sys.exit(main())
