"""The benchmark's Retina-design rows do the work they stand for (bench/bpf/retina_design.c).

``bench/datapath.py`` compares our data path with Retina's design re-created: its packetforward
socket filter, and for the basic plugins also its DNS tracer (a second socket filter that parses
every packet). A row is only a fair comparison if its filter really does that work: here real
DNS messages between two lab pods each reach the DNS filter's ring buffer once per veth they
cross, and other datagrams do not.
"""

from __future__ import annotations

import ctypes
import importlib.util
import socket
import struct
import threading
from pathlib import Path

from retina_agent.bpf.maps import BpfMap
from retina_agent.bpf.ringbuf import RingBuffer
from retina_lab.traffic import send_udp, udp_sink
from tests.helpers.capture import wait_until

BENCH = Path(__file__).resolve().parents[2] / "bench" / "datapath.py"
PACKET_OUTGOING = 4


def bench_datapath():
    spec = importlib.util.spec_from_file_location("bench_datapath", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dns_query(query_id: int) -> bytes:
    """A DNS query for example.org A (header, one question)."""
    name = b"".join(bytes([len(p)]) + p for p in (b"example", b"org")) + b"\x00"
    return struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", 1, 1)


def test_retina_dns_filter_sees_each_dns_message_at_each_veth_and_nothing_else(lab_node) -> None:
    a, b = lab_node["a"], lab_node["b"]
    design = bench_datapath().RetinaDesign(lab_node.host_veths, ["retina_packetforward", "retina_dns"])
    events: list[tuple[int, int, int]] = []  # (dns id, destination port, pkt_type)
    lock = threading.Lock()

    def on_event(raw: bytes) -> None:
        _sport, dport, qid, _flags, pkt_type = struct.unpack_from("=HHHHB", raw, 32)
        with lock:
            events.append((qid, dport, pkt_type))

    ring = RingBuffer(design.bpf.map_fd("retina_dns_events"), on_event, "retina_dns_test")
    sinks = [udp_sink(b, 53), udp_sink(b, 7777)]  # no ICMP port-unreachable replies
    ring.start()
    design.attach()
    try:
        send_udp(a, b.ip, 7777, 25)  # not DNS: parsed, not reported
        ids = list(range(4100, 4107))
        with a.entered(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for qid in ids:
                s.sendto(dns_query(qid), (b.ip, 53))
        # each query crosses two veths: a's (received from the pod) and b's (sent to the pod)
        wait_until(lambda: len(events) >= 2 * len(ids), 10, "DNS events from both veths")
        send_udp(a, b.ip, 7777, 25)  # after the last query: any report of these would follow it
        counts = BpfMap(design.bpf.map_fd("retina_pf"), ctypes.c_uint32, ctypes.c_uint64 * 2, percpu=True)
        wait_until(
            lambda: sum(v[0] for v in counts.lookup(ctypes.c_uint32(1)) or []) >= 25 + 7 + 25,
            10,
            "packetforward's egress count of every datagram sent to pod b",
        )
    finally:
        design.detach()
        ring.stop()
        for s in sinks:
            s.close()
    with lock:
        seen = list(events)
    assert sorted(qid for qid, _, _ in seen) == sorted(ids * 2)
    assert {dport for _, dport, _ in seen} == {53}
    for qid in ids:
        assert sorted(t == PACKET_OUTGOING for q, _, t in seen if q == qid) == [False, True]
