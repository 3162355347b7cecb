"""Helpers for the capture tests: local server processes (Azurite, moto), ``retina-capture``
runs followed line by line, and tarball readers. The fixtures that use them live in
tests/capture/conftest.py; test modules import these helpers from here, never from a conftest."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import dpkt

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WORKER = str(BIN / "retina-capture")
AZURITE = REPO / ".tools" / "node_modules" / ".bin" / "azurite-blob"
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop_group(proc: subprocess.Popen, grace: float = 10) -> None:
    """Stop a process started with ``start_new_session=True`` and everything it started:
    SIGTERM to its process group, SIGKILL when it has not exited after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Server:
    """A local server process on 127.0.0.1:port, stopped by ``stop()`` (idempotent)."""

    def __init__(self, name: str, argv: list[str], port: int):
        self.name, self.argv, self.port = name, argv, port
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> Server:
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(
            lambda: _port_open(self.port) or self.proc.poll() is not None,
            timeout,
            f"{self.name} on port {self.port}",
        )
        assert self.proc.poll() is None, f"{self.name} exited with {self.proc.returncode}"
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        stop_group(self.proc)
        wait_until(lambda: not _port_open(self.port), 10, f"{self.name} port to close")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class WorkerRun:
    """``retina-capture`` running in the background, its stderr collected line by line."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None):
        full_env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", **(env or {})}
        self.argv = [WORKER, *argv]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.line_times: list[float] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            self.line_times.append(time.monotonic())

    def line_time(self, text: str) -> float:
        return next(t for line, t in zip(self.lines, self.line_times, strict=False) if text in line)

    def wait_for(self, text: str, timeout: float = 30) -> str:
        def seen():
            found = next((line for line in self.lines if text in line), None)
            if found is None and self.proc.poll() is not None:
                self._reader.join(timeout=5)
                found = next((line for line in self.lines if text in line), None)
                if found is None:
                    raise AssertionError(
                        f"worker exited ({self.proc.returncode}) before {text!r}:\n" + self.stderr
                    )
            return found

        return wait_until(seen, timeout, f"worker log line {text!r}")

    def wait(self, timeout: float = 60) -> int:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            self.stop()
        self._reader.join(timeout=5)
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)


def only_tarball(directory: Path) -> Path:
    found = sorted(directory.glob("*.tar.gz"))
    assert len(found) == 1, f"expected one tarball in {directory}, found {found}"
    return found[0]


def pcaps_in(tarball: Path) -> list[bytes]:
    """The pcap files inside a capture tarball, in name order."""
    with tarfile.open(tarball) as tar:
        members = sorted((m for m in tar.getmembers() if ".pcap" in m.name), key=lambda m: m.name)
        return [tar.extractfile(m).read() for m in members]  # type: ignore[union-attr]


def udp_packets(pcap: bytes) -> list[tuple[str, int, int]]:
    """(destination address, destination port, captured length) of every UDP packet."""
    reader = dpkt.pcap.Reader(io.BytesIO(pcap))
    linktype = reader.datalink()
    out = []
    for _ts, buf in reader:
        if linktype == dpkt.pcap.DLT_EN10MB:
            ip = dpkt.ethernet.Ethernet(buf).data
        elif linktype == dpkt.pcap.DLT_LINUX_SLL2:
            ip = dpkt.sll2.SLL2(buf).data
        else:
            ip = dpkt.sll.SLL(buf).data
        if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.udp.UDP):
            out.append((socket.inet_ntop(socket.AF_INET, ip.dst), ip.data.dport, len(buf)))
        elif isinstance(ip, dpkt.ip6.IP6) and isinstance(ip.data, dpkt.udp.UDP):
            out.append((socket.inet_ntop(socket.AF_INET6, ip.dst), ip.data.dport, len(buf)))
        else:
            out.append(("other", 0, len(buf)))
    return out
