"""A capture to a PersistentVolumeClaim, end to end, as the capture user: the API emulator (HTTPS,
RBAC as rendered), the node runner with the built agent image, a claim bound to the hostPath
volume local-path-provisioner would make; ``kubectl retina capture create --pvc`` → the Job's
worker writes its tarball into the claim → ``capture download`` starts a short-lived pod that
mounts the claim read-only and streams the tarball back. And a claim that is not bound keeps
the download pod from running, with the scheduler's reason, until a volume binds it."""

from __future__ import annotations

import io
import secrets
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import dpkt
import kubernetes
import pytest
from kubernetes.stream import stream

from retina_capture import jobs as jobs_mod
from retina_capture.cli import download_pod
from retina_capture.cli.main import main
from retina_lab.kube import KubeEmulator
from retina_lab.noderunner import NodeRunner
from retina_lab.noderunner.claims import local_path_volume
from tests.helpers.capture import free_port
from tests.helpers.download import send_until_jobs_end
from tests.images.conftest import built_images  # noqa: F401 (the fixture, used when the image is missing)
from tests.kube_fixtures import CAPTURE_USER, capture_user_kubeconfig_for, refusals_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
NODE = "pvc-node-a"
NS = "pvc"
MARK = b"retina-pvc-"


@pytest.fixture(scope="module")
def cluster(agent_image: str) -> Iterator[tuple[KubeEmulator, NodeRunner, kubernetes.client.ApiClient]]:
    with KubeEmulator() as kube, NodeRunner.for_emulator(kube, nodes=[NODE]) as runner:
        kube.seed([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}])
        admin = kubernetes.config.new_client_from_config(config_file=str(kube.kubeconfig_path))
        yield kube, runner, admin
        admin.close()
    assert not runner.containers()


@pytest.fixture
def volume_dir() -> Iterator[Path]:
    """The directory local-path-provisioner would make for the volume (removed afterwards)."""
    path = Path("/opt/local-path-provisioner") / f"pvc-{secrets.token_hex(4)}"
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _claim(name: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "local-path",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }


def _payload_numbers(tarball: Path) -> list[int]:
    """The numbers of the marked UDP datagrams in the tarball's pcap, in capture order."""
    with tarfile.open(tarball) as tar:
        (member,) = [m for m in tar.getmembers() if m.name.endswith(".pcap")]
        data = tar.extractfile(member)
        assert data is not None
        pcap = data.read()
    numbers = []
    for _, buf in dpkt.pcap.Reader(io.BytesIO(pcap)):
        start = buf.find(MARK)
        if start >= 0:
            numbers.append(int(buf[start + len(MARK) :]))
    return numbers


def test_pvc_capture_is_written_into_the_claim_and_downloaded_through_a_pod(
    cluster, agent_image, volume_dir, tmp_path
) -> None:
    kube, runner, admin = cluster
    core = kubernetes.client.CoreV1Api(admin)
    name = f"pvc{secrets.token_hex(3)}"
    claim = f"captures-{name}"
    # What the cluster admin's storage gives: the claim, and the volume local-path-provisioner makes.
    core.create_namespaced_persistent_volume_claim(NS, _claim(claim))
    core.create_persistent_volume(local_path_volume(f"pv-{name}", NODE, str(volume_dir)))
    runner.wait_for(
        "the claim bound",
        lambda: (
            getattr(core.read_namespaced_persistent_volume_claim(claim, NS).status, "phase", None) == "Bound"
        ),
        timeout=30,
    )
    kubeconfig = str(capture_user_kubeconfig_for(kube))
    port = free_port()
    try:
        assert (
            main(
                [
                    "capture",
                    "create",
                    "--name",
                    name,
                    "-n",
                    NS,
                    "--node-names",
                    NODE,
                    "--pvc",
                    claim,
                    "--interfaces",
                    "lo",
                    "--tcpdump-filter",
                    f"udp dst port {port}",
                    "--duration",
                    "4s",
                    "--image",
                    agent_image,
                    "--no-wait",
                    "--kubeconfig",
                    kubeconfig,
                ]
            )
            == 0
        )
        # Numbered datagrams to loopback until the Jobs are done (bounded: 240 s, 20 per second).
        sent, summary = send_until_jobs_end(admin, NS, name, port, lambda n: MARK + f"{n:06d}".encode())
        assert summary["phase"] == "Succeeded", summary
        # The worker wrote into the claim, i.e. into the volume's directory on the node.
        in_volume = sorted(volume_dir.glob(f"{name}-{NODE}-*UTC.tar.gz"))
        assert len(in_volume) == 1, sorted(volume_dir.iterdir())

        out = tmp_path / "out"
        code = main(
            ["capture", "download", "--name", name, "-n", NS, "-o", str(out), "--kubeconfig", kubeconfig]
        )
        assert code == 0
        assert sorted(p.name for p in out.glob("*.tar.gz")) == [in_volume[0].name]
        assert (out / in_volume[0].name).read_bytes() == in_volume[0].read_bytes()
        numbers = _payload_numbers(out / in_volume[0].name)
        assert numbers and numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers

        # The download pod mounted the claim, and is gone; the capture user was refused nothing.
        selector = f"{jobs_mod.LABEL_APP}={download_pod.LABEL_APP_VALUE}"
        assert core.list_namespaced_pod(NS, label_selector=selector).items == []
        assert refusals_of(kube, CAPTURE_USER) == []
        runner.wait_for(
            "download containers removed", lambda: not [c for c in runner.containers() if "download" in c]
        )
    finally:
        for left in Path("/var/log/retina/captures").glob(f"{name}-*"):
            left.unlink(missing_ok=True)


def test_a_pod_of_an_unbound_claim_waits_with_the_schedulers_reason_then_runs_once_bound(
    cluster, agent_image, volume_dir
) -> None:
    kube, runner, admin = cluster
    core = kubernetes.client.CoreV1Api(admin)
    claim = f"later-{secrets.token_hex(3)}"
    core.create_namespaced_persistent_volume_claim(NS, _claim(claim))
    source = download_pod.Source(
        None, {"persistentVolumeClaim": {"claimName": claim, "readOnly": True}}, agent_image
    )
    body = download_pod.build_pod("unbound", NS, source)
    name = body["metadata"]["name"]
    core.create_namespaced_pod(NS, body)
    try:

        def unschedulable() -> str | None:
            pod = core.read_namespaced_pod(name, NS)
            for c in (pod.status.conditions if pod.status else None) or []:
                if c.type == "PodScheduled" and c.status == "False":
                    return c.message
            return None

        message = runner.wait_for("PodScheduled=False", unschedulable, timeout=30)
        assert message == "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims"
        assert core.read_namespaced_pod(name, NS).status.phase == "Pending"
        assert not [
            c for c in runner.containers() if f"_{name}_" in c
        ]  # nothing started on an empty directory
        # The volume appears (the provisioner's work): the claim binds and the pod runs on the node.
        volume_dir.mkdir(parents=True)
        (volume_dir / "kept.txt").write_text("from the volume\n")
        core.create_persistent_volume(local_path_volume(f"pv-{claim}", NODE, str(volume_dir)))
        runner.wait_for(
            "pod Running", lambda: core.read_namespaced_pod(name, NS).status.phase == "Running", 120
        )
        pod = core.read_namespaced_pod(name, NS)
        assert pod.spec.node_name == NODE
        exec_out = stream(
            core.connect_get_namespaced_pod_exec,
            name,
            NS,
            command=[
                "sh",
                "-c",
                f"cat {download_pod.MOUNT_PATH}/kept.txt; touch {download_pod.MOUNT_PATH}/x",
            ],
            stderr=True,
            stdout=True,
        )
        assert "from the volume" in exec_out
        assert "Read-only file system" in exec_out  # the claim is mounted read-only
        assert not (volume_dir / "x").exists()
    finally:
        core.delete_namespaced_pod(name, NS, grace_period_seconds=0)
        runner.wait_for(
            "pod containers removed", lambda: not [c for c in runner.containers() if f"_{name}_" in c], 60
        )
