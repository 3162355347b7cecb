"""``kubectl retina capture download`` of a host-path capture, end to end, as the capture user: the
API emulator (HTTPS, RBAC as rendered), the node runner playing two nodes with the built agent
image, the real worker capturing real loopback traffic, then a download pod on each node that
streams the tarballs back over ``pods/exec`` and is removed."""

from __future__ import annotations

import io
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import dpkt
import kubernetes
import pytest

from retina_capture import jobs as jobs_mod
from retina_capture.cli import download_pod
from retina_capture.cli.merge import read_merged
from retina_lab.kube import KubeEmulator
from retina_lab.noderunner import NodeRunner
from tests.helpers.capture import free_port, pcaps_in, wait_until
from tests.helpers.download import create_capture, kubectl_retina, send_until_jobs_end
from tests.kube_fixtures import CAPTURE_USER, capture_user_kubeconfig_for, refusals_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
NODES = ["dl-node-a", "dl-node-b"]
NS = "web"


@pytest.fixture(scope="module")
def cluster(agent_image: str) -> Iterator[tuple[KubeEmulator, NodeRunner]]:
    with KubeEmulator() as kube, NodeRunner.for_emulator(kube, nodes=NODES) as runner:
        kube.seed([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}])
        yield kube, runner
    assert not runner.containers()


def _payloads(pcap_bytes: bytes) -> list[bytes]:
    """UDP payloads of a pcap (any link type tcpdump writes for 'lo' or 'any')."""
    out = []
    for _, buf in dpkt.pcap.Reader(io.BytesIO(pcap_bytes)):
        start = buf.find(b"retina-dl-")
        if start >= 0:
            out.append(buf[start:])
    return out


def test_host_path_capture_downloads_through_a_pod_on_each_node(cluster, agent_image, tmp_path) -> None:
    kube, runner = cluster
    kubeconfig = str(capture_user_kubeconfig_for(kube))
    admin = kubernetes.config.new_client_from_config(config_file=str(kube.kubeconfig_path))
    name = f"dl{secrets.token_hex(3)}"
    host_dir = Path(jobs_mod.HOST_PATH_BASE) / name
    port = free_port()
    try:
        create_capture(
            kubeconfig,
            name,
            NS,
            "--node-names",
            ",".join(NODES),
            "--host-path",
            name,
            "--interfaces",
            "lo",
            "--tcpdump-filter",
            f"udp dst port {port}",
            "--duration",
            "4s",
            "--image",
            agent_image,
        )

        # Numbered datagrams to loopback until the Jobs are done (bounded: 240 s, 20 per second).
        sent, summary = send_until_jobs_end(admin, NS, name, port, lambda n: f"retina-dl-{n:06d}".encode())
        assert summary["phase"] == "Succeeded", summary
        on_host = sorted(host_dir.glob(f"{name}-*UTC.tar.gz"))
        assert [len(list(host_dir.glob(f"{name}-{n}-*UTC.tar.gz"))) for n in NODES] == [1, 1], on_host

        out = tmp_path / "out"
        code = kubectl_retina(kubeconfig, "download", "--name", name, "-n", NS, "-o", str(out), "--merge")
        assert code == 0
        got = sorted(p.name for p in out.glob("*.tar.gz"))
        assert got == [p.name for p in on_host]
        for path in on_host:  # byte for byte what the worker wrote on the node
            assert (out / path.name).read_bytes() == path.read_bytes()

        # Real packets: each node saw a contiguous run of the numbered datagrams.
        counts = {}
        for node in NODES:
            (tarball,) = out.glob(f"{name}-{node}-*UTC.tar.gz")
            (pcap,) = pcaps_in(tarball)
            payloads = _payloads(pcap)
            numbers = [int(p.removeprefix(b"retina-dl-")) for p in payloads]
            assert numbers and numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers
            counts[node] = len(numbers)
        merged = read_merged(out / f"{name}-merged.pcapng")
        assert {node: sum(1 for p in merged if p.node == node) for node in NODES} == counts
        assert [p.ts for p in merged] == sorted(p.ts for p in merged)

        # The download pods are gone, and the capture user was refused nothing.
        core = kubernetes.client.CoreV1Api(admin)
        selector = f"{jobs_mod.LABEL_APP}={download_pod.LABEL_APP_VALUE}"
        assert core.list_namespaced_pod(NS, label_selector=selector).items == []
        assert refusals_of(kube, CAPTURE_USER) == []
        wait_until(
            lambda: not [c for c in runner.containers() if "download" in str(c)],
            60,
            "download containers to go",
        )
    finally:
        admin.close()
        shutil.rmtree(host_dir, ignore_errors=True)
        for left in Path("/var/log/retina/captures").glob(f"{name}-*"):
            shutil.rmtree(left, ignore_errors=True) if left.is_dir() else left.unlink(missing_ok=True)
