"""Our data path reads packets, it never changes them: a program after ours on the same hook
sees each packet exactly as it would without us.

Before: the parse pulled a fixed 74 bytes (Ethernet + IPv6 + TCP) into the linear part of every
skb whose head was shorter: every IPv4 TCP segment without TCP options (the head of a segment
holds just its headers: 54 bytes), which made the cloned skb's head private (a copy per segment,
TCP keeps the clone for retransmission) and changed what later programs saw.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from retina_agent.bpf import syscall
from retina_agent.bpf.client import load_programs
from retina_agent.bpf.maps import BpfMap
from retina_agent.bpf.spec import LoadedProgram, ProgramSpec
from retina_lab.agent import AgentProcess, _tcx_links, our_tc_filters, wait_for

PORT = 7240
OBSERVER = Path(__file__).parent / "bpf" / "objects" / "after_ours.bpf.o"  # bpf/after_ours.c


def _stream(a, b, size: int) -> None:
    """``size`` bytes over one TCP connection from pod a to pod b, read to the end."""
    with b.entered():
        server = socket.create_server((b.ip, PORT))
    received = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            n = 0
            while chunk := conn.recv(1 << 16):
                n += len(chunk)
            received.append(n)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with a.entered():
            client = socket.create_connection((b.ip, PORT), timeout=10)
        with client:
            client.sendall(b"x" * size)
        t.join(30)
    finally:
        server.close()
    assert received == [size]


def test_a_program_after_ours_sees_tcp_segments_unchanged(lab_node):
    a, b = lab_node["a"], lab_node["b"]
    veth = a.host_veth  # pod a's segments enter the node at this veth's TC ingress
    index = int(Path(f"/sys/class/net/{veth}/ifindex").read_text())
    loaded = load_programs(
        [
            ProgramSpec(
                plugin="after_ours",
                obj=str(OBSERVER),
                constants={"port": PORT},
                programs=["after_ours"],
                maps=["linear"],
            )
        ]
    )["after_ours"]
    assert isinstance(loaded, LoadedProgram), loaded
    table = BpfMap(loaded.maps["linear"], ctypes.c_uint32, ctypes.c_uint64)

    def seen() -> tuple[int, int, int]:
        values = [table.lookup(ctypes.c_uint32(i)).value for i in range(3)]
        for i in range(3):
            table.update(ctypes.c_uint32(i), ctypes.c_uint64(0))
        return values[0], values[1], values[2]

    def phase(first_expected: Callable[[list[int]], bool], what: str) -> tuple[int, int, int]:
        """One stream, counted by the observer; repeated (up to 3 times) when the TCX chain did
        not hold the order ``first_expected`` wants at the end: other agents on this machine
        attach at the head of every veth's chain, and theirs may change packets."""
        for _ in range(3):
            seen()  # zeroes the table
            _stream(a, b, 4 << 20)
            counts = seen()
            if first_expected(syscall.prog_query(index, syscall.BPF_TCX_INGRESS)):
                return counts
        pytest.skip(f"another agent kept attaching before {what} on {veth}")

    observer = syscall.prog_info(loaded.programs["after_ours"]).id
    # no TCP timestamps: segments carry a bare 20-byte TCP header (as from peers without them)
    a.run(["sysctl", "-qw", "net.ipv4.tcp_timestamps=0"])
    link = syscall.link_create_tcx(loaded.programs["after_ours"], index, "ingress", first=True)
    try:
        alone = phase(lambda ids: ids[:1] == [observer], "the observer")
        assert alone[0] > 0, "no TCP segment seen: the test measures nothing"
        only_here = {"interfaces": [veth]}
        with AgentProcess(
            {"dataPathAttach": "tcx", "plugins": {"packetforward": only_here, "dns": only_here}}
        ) as agent:
            wait_for(
                lambda: (
                    f"{veth}/ingress/retina_dns_ingress"
                    in [f.split("@")[0] for f in our_tc_filters(agent.proc.pid)]
                ),
                10,
                message="our data path (with its parse) on the veth",
            )
            ours = [p for (i, d, p) in _tcx_links(agent.proc.pid) if i == index and d == "ingress"]
            with_us = phase(lambda ids: ids[:2] == [*ours, observer], "ours")
        assert with_us[0] > 0
        # the same linear part as without us: headers only, nothing pulled in
        assert (with_us[1], with_us[2]) == (alone[1], alone[2]), (alone, with_us)
    finally:
        os.close(link)
        with contextlib.suppress(OSError):
            loaded.close()
