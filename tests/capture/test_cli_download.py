"""``kubectl retina capture download [--merge]`` from a real (moto) S3 server."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import tarfile
from pathlib import Path

import boto3
import dpkt

from retina_capture.cli.main import main
from retina_capture.cli.merge import read_merged
from tests import kube_fixtures
from tests.kube_fixtures import capture_user_kubeconfig_for, small_cluster

# pytest fixtures shared from tests/kube_fixtures.py
kube_emulator = kube_fixtures.kube_emulator
kube_api_client = kube_fixtures.kube_api_client


def udp_frame(src: str, dst: str, payload: bytes) -> bytes:
    udp = dpkt.udp.UDP(sport=4000, dport=5000, data=payload)
    udp.ulen = len(bytes(udp))
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=dpkt.ip.IP_PROTO_UDP, data=udp)
    ip.len = len(bytes(ip))
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, data=ip))


def tarball(directory: Path, capture: str, node: str, packets: list[tuple[float, bytes]]) -> Path:
    """A worker-style tarball: one top folder with a pcap and a metadata file."""
    stem = f"{capture}-{node}-20260101120000UTC"
    pcap = io.BytesIO()
    writer = dpkt.pcap.Writer(pcap)
    for ts, frame in packets:
        writer.writepkt(frame, ts=ts)
    path = directory / f"{stem}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in ((f"{stem}/{stem}.pcap", pcap.getvalue()), (f"{stem}/ip-resources.txt", b"lo\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def node_packets() -> dict[str, list[tuple[float, bytes]]]:
    return {
        "node-1": [(1000.0 + i * 0.2, udp_frame("10.244.1.10", "10.244.2.10", f"n1-{i}".encode()))
                   for i in range(3)],  # 1000.0, 1000.2, 1000.4
        "node-2": [(1000.1 + i * 0.2, udp_frame("10.244.2.10", "10.244.1.10", f"n2-{i}".encode()))
                   for i in range(2)],  # 1000.1, 1000.3
    }


def test_download_merge_from_s3(kube_emulator, moto_s3, tmp_path, capsys, monkeypatch) -> None:
    small_cluster(kube_emulator)
    monkeypatch.setenv("RETINA_CAPTURE_S3_ACCESS_KEY_ID", "testing-id")
    monkeypatch.setenv("RETINA_CAPTURE_S3_SECRET_ACCESS_KEY", "testing-secret")
    kubeconfig = str(capture_user_kubeconfig_for(kube_emulator))
    assert main(["capture", "create", "--name", "dl", "-n", "web", "--node-names", "node-1,node-2",
                 "--s3-bucket", "caps", "--s3-endpoint", moto_s3.url, "--s3-region", "us-east-1",
                 "--no-wait", "--kubeconfig", kubeconfig]) == 0

    # What the two workers would have uploaded (plus an unrelated object that must be ignored).
    s3 = boto3.client("s3", endpoint_url=moto_s3.url, region_name="us-east-1",
                      aws_access_key_id="testing-id", aws_secret_access_key="testing-secret")
    s3.create_bucket(Bucket="caps")
    made = tmp_path / "made"
    made.mkdir()
    for node, packets in node_packets().items():
        path = tarball(made, "dl", node, packets)
        s3.upload_file(str(path), "caps", f"retina/captures/{path.name}")
    s3.put_object(Bucket="caps", Key="retina/captures/dl-other.txt", Body=b"x")
    capsys.readouterr()

    out = tmp_path / "out"
    assert main(["capture", "download", "--name", "dl", "-n", "web", "-o", str(out), "--merge",
                 "--kubeconfig", kubeconfig]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "dl-merged.pcapng", "dl-node-1-20260101120000UTC.tar.gz", "dl-node-2-20260101120000UTC.tar.gz"]
    for path in made.iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes()  # byte-identical download
    assert "merged 5 packets (node-1: 3, node-2: 2)" in printed

    merged = read_merged(out / "dl-merged.pcapng")
    assert [(p.node, round(p.ts, 1)) for p in merged] == [
        ("node-1", 1000.0), ("node-2", 1000.1), ("node-1", 1000.2), ("node-2", 1000.3), ("node-1", 1000.4)]
    expected = {frame for packets in node_packets().values() for _, frame in packets}
    assert {p.data for p in merged} == expected
    # Any pcapng reader sees the five packets in time order.
    with (out / "dl-merged.pcapng").open("rb") as fh:
        stamps = [ts for ts, _ in dpkt.pcapng.Reader(fh)]
    assert stamps == sorted(stamps) and len(stamps) == 5
    # ... and so does tcpdump (libpcap), with the node as the interface name.
    shown = subprocess.run(["tcpdump", "-r", str(out / "dl-merged.pcapng"), "-nn", "-e", "--interface=any"],
                           capture_output=True, text=True, timeout=30)
    if shown.returncode != 0:  # older tcpdump without per-interface names for pcapng
        shown = subprocess.run(["tcpdump", "-r", str(out / "dl-merged.pcapng"), "-nn"],
                               capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert len(shown.stdout.splitlines()) == 5


def test_merge_from_a_directory_without_the_api(tmp_path, capsys) -> None:
    for node, packets in node_packets().items():
        tarball(tmp_path, "local", node, packets)
    out = tmp_path / "merged"
    assert main(["capture", "download", "--name", "local", "--from-dir", str(tmp_path), "-o", str(out),
                 "--merge", "--kubeconfig", os.devnull]) == 0
    assert [p.node for p in read_merged(out / "local-merged.pcapng")] == [
        "node-1", "node-2", "node-1", "node-2", "node-1"]


def test_download_of_a_host_path_capture_says_where_the_files_are(kube_emulator, capsys) -> None:
    small_cluster(kube_emulator)
    kubeconfig = str(capture_user_kubeconfig_for(kube_emulator))
    assert main(["capture", "create", "--name", "hp", "-n", "web", "--node-names", "node-1", "--host-path",
                 "incidents", "--no-wait", "--kubeconfig", kubeconfig]) == 0
    capsys.readouterr()
    assert main(["capture", "download", "--name", "hp", "-n", "web", "--kubeconfig", kubeconfig]) == 1
    err = capsys.readouterr().err
    assert "/var/lib/retina/captures/incidents" in err and "--from-dir" in err
    assert main(["capture", "download", "--name", "nope", "-n", "web", "--kubeconfig", kubeconfig]) == 1
    assert "--name: no capture 'nope'" in capsys.readouterr().err
