"""Packets the benchmarks hand to ``BPF_PROG_TEST_RUN``, built once here."""

from __future__ import annotations

import socket
import struct


def udp_frame(src: str, dst: str, sport: int, dport: int, payload: int = 64) -> bytes:
    """An Ethernet frame with an IPv4/UDP packet (what pod a sends pod b in the UDP phase)."""
    udp_len = 8 + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0x4000, 64, socket.IPPROTO_UDP, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp + b"\x00" * payload
