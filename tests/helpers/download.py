"""Helpers for the ``kubectl retina capture download`` tests (tests/capture/test_cli_download*.py):
worker-style tarballs of known packets, the CLI run as the capture user, and clients for the real
object stores (moto S3, Azurite) with which the tests play the workers' uploads."""

from __future__ import annotations

import contextlib
import io
import socket
import tarfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import dpkt
import kubernetes

from retina_capture import jobs as jobs_mod
from retina_capture.cli import download_pod
from retina_capture.cli.main import main
from tests.helpers.capture import AZURITE_ACCOUNT, AZURITE_KEY, Server

#: The S3 keys the tests give kubectl-retina (in its environment) and use to play the workers.
S3_KEYS = {
    "RETINA_CAPTURE_S3_ACCESS_KEY_ID": "testing-id",
    "RETINA_CAPTURE_S3_SECRET_ACCESS_KEY": "testing-secret",
}
S3_REGION = "us-east-1"
#: The time stamp of every tarball these tests make (the worker's ``<capture>-<node>-<time>UTC``).
STAMP = "20260101120000UTC"


def udp_frame(src: str, dst: str, payload: bytes) -> bytes:
    """An Ethernet/IPv4/UDP frame, 4000 -> 5000."""
    udp = dpkt.udp.UDP(sport=4000, dport=5000, data=payload)
    udp.ulen = len(bytes(udp))
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=dpkt.ip.IP_PROTO_UDP, data=udp)
    ip.len = len(bytes(ip))
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, data=ip))


def tarball(directory: Path, capture: str, node: str, packets: list[tuple[float, bytes]]) -> Path:
    """A worker-style tarball: one top folder with a pcap and a metadata file."""
    stem = f"{capture}-{node}-{STAMP}"
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


#: Each node's address: the source of the packets it captured in :func:`node_packets`.
NODE_IPS = {"node-1": "10.244.1.10", "node-2": "10.244.2.10"}


def node_packets() -> dict[str, list[tuple[float, bytes]]]:
    """Three packets on node-1 (at 1000.0, .2, .4) and two on node-2 (.1, .3): merged, they alternate."""
    one, two = NODE_IPS["node-1"], NODE_IPS["node-2"]
    return {
        "node-1": [(1000.0 + i * 0.2, udp_frame(one, two, f"n1-{i}".encode())) for i in range(3)],
        "node-2": [(1000.1 + i * 0.2, udp_frame(two, one, f"n2-{i}".encode())) for i in range(2)],
    }


#: The node of each packet of :func:`node_packets`, merged in time order.
MERGED_NODES = ["node-1", "node-2", "node-1", "node-2", "node-1"]


def node_tarballs(directory: Path, capture: str) -> list[Path]:
    """One tarball of :func:`node_packets` per node, made in ``directory`` (created)."""
    directory.mkdir(parents=True, exist_ok=True)
    return [tarball(directory, capture, node, packets) for node, packets in node_packets().items()]


def kubectl_retina(kubeconfig: str | Path, *argv: str) -> int:
    """``kubectl retina capture ARGV --kubeconfig KUBECONFIG``; its exit code."""
    return main(["capture", *argv, "--kubeconfig", str(kubeconfig)])


def create_capture(kubeconfig: str | Path, name: str, namespace: str, *options: str) -> None:
    """``capture create --no-wait`` that must succeed; its error output is the failure message
    (and is not left for the test's ``capsys``: what the test reads next is the download's)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = kubectl_retina(kubeconfig, "create", "--name", name, "-n", namespace, *options, "--no-wait")
    assert code == 0, f"capture create {name} exited {code}: {err.getvalue()}"


def s3_options(moto_s3: Server, *extra: str) -> list[str]:
    """The ``capture create`` flags of an S3 output in bucket ``caps`` on the moto server."""
    return ["--s3-bucket", "caps", "--s3-endpoint", moto_s3.url, "--s3-region", S3_REGION, *extra]


def s3_client(moto_s3: Server) -> Any:
    """A boto3 S3 client of the moto server, with :data:`S3_KEYS`."""
    return boto3.client(
        "s3",
        endpoint_url=moto_s3.url,
        region_name=S3_REGION,
        aws_access_key_id=S3_KEYS["RETINA_CAPTURE_S3_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_KEYS["RETINA_CAPTURE_S3_SECRET_ACCESS_KEY"],
    )


def blob_container_sas_url(azurite: Server, container: str) -> str:
    """A read/list/write SAS URL of an Azurite container, as ``RETINA_CAPTURE_BLOB_UPLOAD`` takes it."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(
        AZURITE_ACCOUNT,
        container,
        account_key=AZURITE_KEY,
        permission=ContainerSasPermissions(read=True, list=True, write=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    return f"{azurite.url}/{AZURITE_ACCOUNT}/{container}?{sas}"


def blob_container(azurite: Server, container: str) -> Any:
    """A new container on the Azurite server (its ``ContainerClient``)."""
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient(f"{azurite.url}/{AZURITE_ACCOUNT}", credential=AZURITE_KEY).create_container(
        container
    )


def download_pods(kube: Any, namespace: str) -> list[str]:
    """Names of the download pods kubectl-retina made in ``namespace``."""
    return [
        p["metadata"]["name"]
        for p in kube.objects("Pod", namespace)
        if p["metadata"].get("labels", {}).get(jobs_mod.LABEL_APP) == download_pod.LABEL_APP_VALUE
    ]


def send_until_jobs_end(
    admin: Any, namespace: str, capture: str, port: int, payload: Callable[[int], bytes], timeout: float = 240
) -> tuple[int, dict[str, Any]]:
    """Numbered datagrams to loopback ``port`` (20 per second, bounded by ``timeout``) until the
    capture's Jobs stop running; (datagrams sent, the Jobs' summary)."""
    batch = kubernetes.client.BatchV1Api(admin)
    sent, summary = 0, {}
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        while time.monotonic() < deadline:
            sock.sendto(payload(sent), ("127.0.0.1", port))
            sent += 1
            if sent % 20 == 0:
                jobs = batch.list_namespaced_job(
                    namespace, label_selector=jobs_mod.capture_selector(capture)
                ).items
                summary = jobs_mod.summarize_jobs(admin.sanitize_for_serialization(j) for j in jobs)
                if summary["phase"] != "Running":
                    break
            time.sleep(0.05)
    return sent, summary
