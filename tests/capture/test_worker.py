"""The capture worker for real: tcpdump on a lab node's veths, pcaps read back with dpkt."""

from __future__ import annotations

import io
import json
import re
import socket
import struct
import tarfile
import time
from collections import Counter

import dpkt
import pytest

from tests.helpers.capture import only_tarball, pcaps_in, udp_packets

pytestmark = pytest.mark.timeout(120)

# Sends `count` UDP datagrams of `size` bytes to each (address, port), from inside a pod.
# Optional pacing: `per_burst` datagrams then a 10 ms pause, bounded by `seconds`.
SENDER = r"""
import json, socket, sys, time
spec = json.loads(sys.argv[1])
deadline = time.monotonic() + spec.get("seconds", 20)
socks = {4: socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
         6: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)}
payload = bytes(spec.get("size", 100))
sent = 0
for n in range(spec["count"]):
    for addr, port in spec["targets"]:
        if time.monotonic() > deadline:
            break
        s = socks[6 if ":" in addr else 4]
        try:
            s.sendto(payload, (addr, port))
            sent += 1
        except OSError:
            pass
    if spec.get("per_burst") and n % spec["per_burst"] == 0:
        time.sleep(0.01)
print(sent)
"""


def send_udp(pod, targets: list[tuple[str, int]], count: int, size: int = 100, **extra) -> int:
    spec = {"targets": targets, "count": count, "size": size, **extra}
    out = pod.run(["python3", "-c", SENDER, json.dumps(spec)], timeout=60)
    return int(out.stdout.strip())


def warm_up(lab) -> None:
    """Resolve neighbours (pod to pod, and node to pod a) before capturing, on a port no test uses."""
    a = lab["a"]
    send_udp(a, [(lab["b"].ip, 9), (lab["c"].ip, 9), (lab["b"].ip6, 9)], count=1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"x", (a.ip, 9))

    def neighbour_known() -> bool:
        out = a.run(["ip", "neigh", "show"]).stdout
        return lab["b"].ip in out and lab["c"].ip in out

    deadline = time.monotonic() + 10
    while not neighbour_known():
        assert time.monotonic() < deadline, "pod a never resolved its neighbours"
        time.sleep(0.05)


def base_args(dirs, name: str) -> list[str]:
    return [
        "--name",
        name,
        "--host-path",
        "out",
        "--host-path-base",
        str(dirs["base"]),
        "--output-dir-tmp",
        str(dirs["tmp"]),
    ]


def test_include_exclude_select_exactly_the_matching_packets(lab, worker, dirs):
    a, b, c = lab["a"], lab["b"], lab["c"]
    warm_up(lab)
    run = worker(
        [
            *base_args(dirs, "filters"),
            "--pod-ips",
            a.ip,
            "--duration",
            "5s",
            "--include-metadata",
            "false",
            "--include-filter",
            f"{b.ip}:5001,{b.ip}:5002,*:5003,[{b.ip6}]:5005",
            "--exclude-filter",
            f"{b.ip}:5002,{c.ip}:*",
        ]
    )
    run.wait_for(f"{a.ip}={a.host_veth}")  # the pod's own veth was found through the bridge
    run.wait_for("capture started")
    targets = (
        [(b.ip, p) for p in (5001, 5002, 5003, 5004)]
        + [(c.ip, 5001), (c.ip, 5003)]
        + [(b.ip6, 5005), (b.ip6, 5006)]
    )
    assert send_udp(a, targets, count=20) == 20 * len(targets)
    assert run.wait() == 0, run.stderr

    (pcap,) = pcaps_in(only_tarball(dirs["base"] / "out"))
    seen = Counter((dst, port) for dst, port, _ in udp_packets(pcap))
    assert seen == {(b.ip, 5001): 20, (b.ip, 5003): 20, (b.ip6, 5005): 20}


def test_packet_size_truncates_every_packet(lab, worker, dirs):
    a, b = lab["a"], lab["b"]
    warm_up(lab)
    run = worker(
        [
            *base_args(dirs, "snap"),
            "--interfaces",
            a.host_veth,
            "--duration",
            "4s",
            "--packet-size",
            "64",
            "--include-metadata",
            "false",
            "--tcpdump-filter",
            f"udp and dst host {b.ip}",
        ]
    )
    run.wait_for("capture started")
    send_udp(a, [(b.ip, 6000)], count=10, size=1000)
    assert run.wait() == 0, run.stderr

    (pcap,) = pcaps_in(only_tarball(dirs["base"] / "out"))
    reader = dpkt.pcap.Reader(io.BytesIO(pcap))
    assert reader.snaplen == 64
    frames = list(reader)
    assert len(frames) == 10
    for _ts, buf in frames:
        assert len(buf) == 64
        ip_total_length = struct.unpack("!H", buf[14 + 2 : 14 + 4])[0]
        assert ip_total_length == 20 + 8 + 1000  # the packet on the wire was whole


def test_max_size_stops_early_at_about_one_megabyte(lab, worker, dirs):
    a, b = lab["a"], lab["b"]
    warm_up(lab)
    run = worker(
        [
            *base_args(dirs, "size"),
            "--interfaces",
            a.host_veth,
            "--duration",
            "60s",
            "--max-size",
            "1",
            "--include-metadata",
            "false",
        ]
    )
    run.wait_for("capture started")
    # ~6 MB offered, paced; the capture must stop after ~1 MB, long before 60 s
    send_udp(a, [(b.ip, 7000)], count=5000, size=1200, per_burst=20, seconds=30)
    assert run.wait(timeout=30) == 0, run.stderr
    assert "capture stopped (max-size)" in run.stderr
    assert run.line_time("capture stopped") - run.line_time("capture started") < 30

    pcaps = pcaps_in(only_tarball(dirs["base"] / "out"))
    assert len(pcaps) == 1
    assert 950_000 <= len(pcaps[0]) <= 1_100_000, len(pcaps[0])


def test_file_count_rotates_within_max_size(lab, worker, dirs):
    a, b = lab["a"], lab["b"]
    warm_up(lab)
    run = worker(
        [
            *base_args(dirs, "rotate"),
            "--interfaces",
            a.host_veth,
            "--duration",
            "60s",
            "--max-size",
            "3",
            "--file-count",
            "3",
            "--include-metadata",
            "false",
        ]
    )
    run.wait_for("capture started")
    send_udp(a, [(b.ip, 7000)], count=8000, size=1200, per_burst=20, seconds=40)
    assert run.wait(timeout=40) == 0, run.stderr
    pcaps = pcaps_in(only_tarball(dirs["base"] / "out"))
    assert len(pcaps) == 3
    assert all(1_000_000 <= len(p) <= 1_100_000 for p in pcaps), [len(p) for p in pcaps]


def test_duration_stops_in_about_three_seconds_and_tarball_has_metadata(lab, worker, dirs):
    a = lab["a"]
    run = worker(
        [*base_args(dirs, "timed"), "--interfaces", a.host_veth, "--duration", "3s", "--node-name", "node-1"]
    )
    run.wait_for("capture started")
    assert run.wait(timeout=60) == 0, run.stderr
    elapsed = run.line_time("capture stopped") - run.line_time("capture started")
    assert 2.9 <= elapsed <= 4.0, elapsed
    assert "capture stopped (duration)" in run.stderr

    tarball = only_tarball(dirs["base"] / "out")
    m = re.fullmatch(r"timed-node-1-(\d{14})UTC\.tar\.gz", tarball.name)
    assert m, tarball.name
    assert abs(time.mktime(time.strptime(m.group(1), "%Y%m%d%H%M%S")) - time.mktime(time.gmtime())) < 120
    top = tarball.name.removesuffix(".tar.gz")
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
        for wanted in (
            "ip-resources.txt",
            "iptables-rules.txt",
            "socket-stats.txt",
            "proc-net/dev",
            "proc-sys-net/ipv4/ip_forward",
            f"{top}-{a.host_veth}.pcap",
        ):
            assert f"{top}/{wanted}" in names, wanted
        ip_resources = tar.extractfile(f"{top}/ip-resources.txt").read().decode()
        sockets = tar.extractfile(f"{top}/socket-stats.txt").read().decode()
    assert lab.bridge in ip_resources and "### ip rule show" in ip_resources
    assert "### ss -tapionume" in sockets
    assert not any(dirs["tmp"].iterdir()), "the build directory was not cleaned up"


def test_unknown_pod_veth_falls_back_to_any_with_host_filter(lab, worker, dirs):
    a, b = lab["a"], lab["b"]
    warm_up(lab)
    # the node has no neighbour entry for pod b: its veth cannot be told
    from retina_agent.demo.node import run as host_run

    host_run(["ip", "neigh", "flush", "to", b.ip], check=False)
    run = worker(
        [
            *base_args(dirs, "fallback"),
            "--pod-ips",
            b.ip,
            "--duration",
            "4s",
            "--include-metadata",
            "false",
            "--tcpdump-filter",
            "udp",
        ]
    )
    run.wait_for("capturing on 'any' restricted to the pod IPs")
    started = run.wait_for("capture started")
    assert f"host {b.ip}" in started
    send_udp(a, [(b.ip, 5001), (lab["c"].ip, 5001)], count=5)
    assert run.wait() == 0, run.stderr
    (pcap,) = pcaps_in(only_tarball(dirs["base"] / "out"))
    seen = Counter((dst, port) for dst, port, _ in udp_packets(pcap))
    # on `any` a bridged packet is seen on the sender's veth, the bridge and the receiver's veth
    assert set(seen) == {(b.ip, 5001)}
    assert seen[(b.ip, 5001)] % 5 == 0 and seen[(b.ip, 5001)] >= 5
