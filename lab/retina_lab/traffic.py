"""Traffic run inside lab pods: sockets made in the pod's network namespace.

Used by the tests, the demo, the dashboards' lab workload and the benchmarks.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable

from retina_agent.demo.node import LabPod


def udp_sink(pod: LabPod, port: int, family: int = socket.AF_INET) -> socket.socket:
    with pod.entered():
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    return s


def send_udp(pod: LabPod, dst: str, port: int, count: int, size: int = 100) -> None:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with pod.entered(), socket.socket(family, socket.SOCK_DGRAM) as s:
        for _ in range(count):
            s.sendto(b"x" * size, (dst, port))


def connect_refused(pod: LabPod, dst: str, port: int, count: int) -> int:
    """``count`` TCP connects to a closed port; returns how many were refused."""
    refused = 0
    with pod.entered():
        for _ in range(count):
            with socket.socket() as s:
                s.settimeout(2)
                try:
                    s.connect((dst, port))
                except ConnectionRefusedError:
                    refused += 1
    return refused


#: Per-call socket timeout over a ``random_loss_rule`` link: TCP backs off on each loss of the
#: same segment (SYN 1+2+4+8 s, data RTO doubling from 0.2 s), so at 30 % a 10 s timeout lost a
#: CI run now and then; this matches the tests' 60 s delivery deadline.
LOSSY_LINK_TIMEOUT = 60


def random_loss_rule(port: int, probability: float = 0.3, proto: str = "tcp") -> list[str]:
    """An iptables INPUT rule (without ``-A``/``-D``) dropping a random share of the packets to
    ``port``: the lab's stand-in for a lossy link, since this machine has no netem."""
    return [
        "INPUT",
        "-p",
        proto,
        "--dport",
        str(port),
        "-m",
        "statistic",
        "--mode",
        "random",
        "--probability",
        str(probability),
        "-j",
        "DROP",
    ]


class TcpServer:
    """Accepts connections in a pod and reads everything sent; ``reply`` (optional) maps each
    chunk received to bytes sent back (None: stay silent)."""

    def __init__(self, pod: LabPod, port: int, reply: Callable[[bytes], bytes | None] | None = None) -> None:
        with pod.entered():
            self.sock = socket.socket()
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("0.0.0.0", port))
            self.sock.listen(128)
        self.reply = reply
        self.conns: list[socket.socket] = []
        self.received = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := conn.recv(65536):
                self.received += len(data)
                answer = self.reply(data) if self.reply is not None else None
                if answer:
                    conn.sendall(answer)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.close()


IPERF3_PORT = 5201


def iperf3(client: LabPod, server: LabPod, seconds: float, *options: str) -> dict:
    """One iperf3 run from ``client`` to ``server`` (extra client ``options``, e.g. ``-u``); the
    ``end`` section of its JSON report. The one-shot server is waited for by its listening socket."""
    proc = server.popen(
        ["iperf3", "-s", "-1", "-B", server.ip, "-p", str(IPERF3_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not server.run(["ss", "-Hltn", f"sport = :{IPERF3_PORT}"]).stdout.strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"iperf3 server in {server.name} did not listen on {IPERF3_PORT}")
            time.sleep(0.05)
        argv = ["iperf3", "-c", server.ip, "-p", str(IPERF3_PORT), "-t", str(seconds), "-J", *options]
        out = client.run(argv, timeout=seconds + 30).stdout
    finally:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return json.loads(out)["end"]
