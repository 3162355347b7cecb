"""``kubectl retina capture download [--merge]`` from a real (moto) S3 server, from a folder, and
through download pods that cannot start or are interrupted."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import dpkt
import pytest
import requests

from retina_capture.cli.main import main
from retina_capture.cli.merge import read_merged
from tests import kube_fixtures
from tests.helpers.download import (
    MERGED_NODES,
    NODE_IPS,
    S3_KEYS,
    STAMP,
    blob_container,
    blob_container_sas_url,
    create_capture,
    download_pods,
    kubectl_retina,
    node_packets,
    node_tarballs,
    s3_client,
    s3_options,
    tarball,
    udp_frame,
)
from tests.kube_fixtures import CAPTURE_USER, capture_user_kubeconfig_for, refusals_of, small_cluster

# pytest fixtures shared from tests/kube_fixtures.py
kube_emulator = kube_fixtures.kube_emulator
kube_api_client = kube_fixtures.kube_api_client


def pod_names(kube, namespace: str) -> list[str]:
    return sorted(p["metadata"]["name"] for p in kube.objects("Pod", namespace))


def test_download_merge_from_s3(kube_emulator, moto_s3, tmp_path, capsys, monkeypatch) -> None:
    small_cluster(kube_emulator)
    for key, value in S3_KEYS.items():
        monkeypatch.setenv(key, value)
    kubeconfig = capture_user_kubeconfig_for(kube_emulator)
    create_capture(kubeconfig, "dl", "web", "--node-names", "node-1,node-2", *s3_options(moto_s3))

    # What the two workers would have uploaded (plus an unrelated object that must be ignored).
    s3 = s3_client(moto_s3)
    s3.create_bucket(Bucket="caps")
    made = node_tarballs(tmp_path / "made", "dl")
    for path in made:
        s3.upload_file(str(path), "caps", f"retina/captures/{path.name}")
    s3.put_object(Bucket="caps", Key="retina/captures/dl-other.txt", Body=b"x")

    out = tmp_path / "out"
    assert kubectl_retina(kubeconfig, "download", "--name", "dl", "-n", "web", "-o", str(out), "--merge") == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "dl-merged.pcapng",
        f"dl-node-1-{STAMP}.tar.gz",
        f"dl-node-2-{STAMP}.tar.gz",
    ]
    for path in made:
        assert (out / path.name).read_bytes() == path.read_bytes()  # byte-identical download
    assert "merged 5 packets (node-1: 3, node-2: 2)" in printed

    merged = read_merged(out / "dl-merged.pcapng")
    assert [(p.node, round(p.ts, 1)) for p in merged] == [
        ("node-1", 1000.0),
        ("node-2", 1000.1),
        ("node-1", 1000.2),
        ("node-2", 1000.3),
        ("node-1", 1000.4),
    ]
    expected = {frame for packets in node_packets().values() for _, frame in packets}
    assert {p.data for p in merged} == expected
    # Any pcapng reader sees the five packets in time order.
    with (out / "dl-merged.pcapng").open("rb") as fh:
        stamps = [ts for ts, _ in dpkt.pcapng.Reader(fh)]
    assert stamps == sorted(stamps) and len(stamps) == 5
    # ... and so does tcpdump (libpcap): each node's packets, in time order.
    shown = subprocess.run(
        ["tcpdump", "-r", str(out / "dl-merged.pcapng"), "-nn", "-tt"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert [(line.split()[0], line.split()[2].rsplit(".", 1)[0]) for line in shown.stdout.splitlines()] == [
        (f"{1000 + i / 10:.6f}", NODE_IPS[node]) for i, node in enumerate(MERGED_NODES)
    ]


def test_merge_from_a_directory_without_the_api(tmp_path, capsys) -> None:
    node_tarballs(tmp_path, "local")
    out = tmp_path / "merged"
    code = kubectl_retina(
        os.devnull, "download", "--name", "local", "--from-dir", str(tmp_path), "-o", str(out), "--merge"
    )
    assert code == 0, capsys.readouterr().err
    assert [p.node for p in read_merged(out / "local-merged.pcapng")] == MERGED_NODES


def test_a_download_pod_that_cannot_start_is_named_and_removed(kube_emulator, tmp_path, capsys) -> None:
    """No kubelet here: the pod stays Pending. The CLI says which node, gives up, deletes the pod."""
    small_cluster(kube_emulator)
    seeded = pod_names(kube_emulator, "web")
    kubeconfig = capture_user_kubeconfig_for(kube_emulator)
    create_capture(kubeconfig, "hp", "web", "--node-names", "node-1", "--host-path", "incidents")
    code = kubectl_retina(
        kubeconfig,
        "download",
        "--name",
        "hp",
        "-n",
        "web",
        "-o",
        str(tmp_path / "out"),
        "--pod-start-timeout",
        "2",
    )
    err = capsys.readouterr().err
    assert code == 1, err
    assert "node node-1 (/var/lib/retina/captures/incidents)" in err and "did not start within 2s" in err
    assert "no tarballs to download yet" in err
    assert pod_names(kube_emulator, "web") == seeded  # removed although it never ran
    assert refusals_of(kube_emulator, CAPTURE_USER) == []
    assert kubectl_retina(kubeconfig, "download", "--name", "nope", "-n", "web") == 1
    assert "--name: no capture 'nope'" in capsys.readouterr().err


def test_ctrl_c_while_waiting_still_removes_the_download_pods(kube_emulator, tmp_path, monkeypatch) -> None:
    from retina_capture.cli import download_pod

    small_cluster(kube_emulator)
    seeded = pod_names(kube_emulator, "web")
    kubeconfig = capture_user_kubeconfig_for(kube_emulator)
    create_capture(kubeconfig, "hp", "web", "--node-names", "node-1,node-2", "--host-path", "x")
    seen: list[int] = []

    def interrupted(*_args, **_kwargs):
        seen.append(len(download_pods(kube_emulator, "web")))
        raise KeyboardInterrupt

    monkeypatch.setattr(download_pod, "_wait_running", interrupted)
    with pytest.raises(KeyboardInterrupt):
        kubectl_retina(kubeconfig, "download", "--name", "hp", "-n", "web", "-o", str(tmp_path))
    assert seen == [2]  # both pods existed when the user pressed Ctrl-C ...
    assert pod_names(kube_emulator, "web") == seeded  # ... and none is left


def test_download_pod_is_least_privilege_and_pinned_like_the_job() -> None:
    from kubernetes_validate import validate

    from retina_capture import jobs as jobs_mod
    from retina_capture.cli import download_pod
    from retina_capture.spec import capture_resource, parse_capture

    capture = parse_capture(
        capture_resource(
            "hp",
            "web",
            {
                "captureConfiguration": {
                    "captureTarget": {"nodeNames": ["node-1"]},
                    "captureOption": {"duration": "10s"},
                },
                "outputConfiguration": {"hostPath": "incidents/today", "persistentVolumeClaim": "caps"},
            },
        )
    )
    job = jobs_mod.build_job(capture, "node-1", image="registry.example/agent:1")
    outputs = json.loads(job["metadata"]["annotations"][jobs_mod.ANNOTATION_OUTPUTS])
    found = download_pod.sources([job], outputs)
    assert [s.where for s in found] == [
        "PersistentVolumeClaim caps",
        "node node-1 (/var/lib/retina/captures/incidents/today)",
    ]
    pvc_pod, host_pod = (download_pod.build_pod("hp", "web", s) for s in found)
    for pod in (pvc_pod, host_pod):
        validate(pod, "1.30", strict=True)
        spec = pod["spec"]
        (container,) = spec["containers"]
        assert container["image"] == "registry.example/agent:1"  # the image the capture ran
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["volumeMounts"] == [{"name": "captures", "mountPath": "/captures", "readOnly": True}]
        assert "hostNetwork" not in spec and "hostPID" not in spec
    assert host_pod["spec"]["volumes"] == [
        {
            "name": "captures",
            "hostPath": {"path": "/var/lib/retina/captures/incidents/today", "type": "Directory"},
        }
    ]
    assert host_pod["spec"]["affinity"] == job["spec"]["template"]["spec"]["affinity"]
    assert host_pod["spec"]["tolerations"] == job["spec"]["template"]["spec"]["tolerations"]
    assert pvc_pod["spec"]["volumes"] == [
        {"name": "captures", "persistentVolumeClaim": {"claimName": "caps", "readOnly": True}}
    ]
    assert "affinity" not in pvc_pod["spec"]  # the claim is wherever the scheduler finds it
    # Only this capture's and this node's tarballs are fetched; names are file names, never paths.
    pattern = download_pod.tarball_pattern("hp", "node-1")
    assert pattern.fullmatch("hp-node-1-20260101120000UTC.tar.gz")
    for other in (
        "hp-node-10-20260101120000UTC.tar.gz",
        "hpx-node-1-20260101120000UTC.tar.gz",
        "hp-node-1-20260101120000UTC.tar.gz\n",
        ".hp-node-1-20260101120000UTC.tar.gz.part",
    ):
        assert not pattern.fullmatch(other), other


def test_blob_names_cannot_write_outside_the_output_directory(
    kube_emulator, azurite, tmp_path, capsys, monkeypatch
) -> None:
    """Blob names are chosen by whoever can write to the container: base names only, '..' refused."""
    small_cluster(kube_emulator)
    container = blob_container(azurite, "caps")
    sas_url = blob_container_sas_url(azurite, "caps")
    monkeypatch.setenv("RETINA_CAPTURE_BLOB_UPLOAD", sas_url)
    kubeconfig = capture_user_kubeconfig_for(kube_emulator)
    create_capture(kubeconfig, "bl", "web", "--node-names", "node-1")

    made = tmp_path / "made"
    made.mkdir()
    good = tarball(made, "bl", "node-1", node_packets()["node-1"])
    nested = tarball(made, "bl", "node-2", node_packets()["node-2"])
    container.upload_blob(good.name, good.read_bytes())
    container.upload_blob(f"bl-x/{nested.name}", nested.read_bytes())  # a folder: saved by base name
    # The SDK would normalise '..' away; a raw request stores it, as any client of the container can.
    escape = f"bl-x/%2E%2E/%2E%2E/%2E%2E/escaped-node-9-{STAMP}.tar.gz"
    container_url, sas = sas_url.split("?", 1)
    put = requests.put(
        f"{container_url}/{escape}?{sas}",
        data=good.read_bytes(),
        headers={"x-ms-blob-type": "BlockBlob"},
        timeout=30,
    )
    assert put.status_code == 201, put.text
    assert f"bl-x/../../../escaped-node-9-{STAMP}.tar.gz" in [b.name for b in container.list_blobs()]
    capsys.readouterr()

    # Deep enough that every reading of the name ('..' from the output or from its 'bl-x') stays
    # inside tmp_path, where the search below looks.
    out = tmp_path / "a" / "b" / "c" / "out"
    code = kubectl_retina(kubeconfig, "download", "--name", "bl", "-n", "web", "-o", str(out))
    err = capsys.readouterr().err
    assert code == 1, err  # something was refused: the user must hear of it
    assert sorted(p.name for p in out.iterdir()) == sorted([good.name, nested.name])
    assert (out / nested.name).read_bytes() == nested.read_bytes()
    assert "escaped-node-9" in err and "not written" in err
    everything = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert not any("escaped" in p for p in everything), everything
    assert refusals_of(kube_emulator, CAPTURE_USER) == []


def big_tarball(directory: Path, capture: str, node: str, megabytes: int, start: float) -> Path:
    """A tarball holding ``megabytes`` MB of 1400-byte UDP frames in two rotated pcap files."""
    stem = f"{capture}-{node}-{STAMP}"
    path = directory / f"{stem}.tar.gz"
    count = megabytes * 1_000_000 // 1400
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for part, suffix in enumerate(("", "1")):
            pcap = directory / f"{stem}.pcap{suffix}"
            with pcap.open("wb") as fh:
                writer = dpkt.pcap.Writer(fh)
                for i in range(count // 2):
                    payload = os.urandom(1350)  # incompressible: the tarball is as big as the pcaps
                    writer.writepkt(udp_frame("10.0.0.1", "10.0.0.2", payload), ts=start + part + i * 1e-4)
            tar.add(pcap, arcname=f"{stem}/{pcap.name}")
            pcap.unlink()
    return path


def test_merge_streams_members_instead_of_holding_them_in_memory(tmp_path) -> None:
    import tracemalloc

    from retina_capture.cli.merge import merge

    inputs = tmp_path / "in"
    inputs.mkdir()
    tarballs = [big_tarball(inputs, "big", f"node-{n}", 12, 1000.0 + n * 1e-5) for n in (1, 2)]
    out = tmp_path / "out" / "big-merged.pcapng"
    out.parent.mkdir()
    tracemalloc.start()
    try:
        counts = merge(tarballs, "big", out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    per_node = 12 * 1_000_000 // 1400 // 2 * 2
    assert counts == {"node-1": per_node, "node-2": per_node}
    # 24 MB of pcaps went through (4 members of 6 MB); holding them would take 24 MB and more.
    assert peak < 6_000_000, f"peak Python memory {peak} bytes while merging 24 MB"
    assert sorted(p.name for p in out.parent.iterdir()) == ["big-merged.pcapng"]  # scratch files removed


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("missing", "does not exist"),
        ("file", "is not a directory"),
    ],
)
def test_from_dir_that_is_not_a_directory_is_a_usage_error(tmp_path, capsys, setup, expected) -> None:
    target = tmp_path / "captures"
    if setup == "file":
        target.write_text("x")
    code = kubectl_retina(
        tmp_path / "no-kubeconfig", "download", "--name", "x", "--from-dir", str(target), "--merge"
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: --from-dir: '{target}' {expected}") and "kubeconfig" not in err
    assert len(err.strip().splitlines()) == 1


def test_garbage_tarball_in_from_dir_is_named(tmp_path, capsys) -> None:
    tarball(tmp_path, "g", "node-1", node_packets()["node-1"])
    (tmp_path / f"g-node-2-{STAMP}.tar.gz").write_bytes(b"this is not gzip" * 100)
    out = tmp_path / "out"
    code = main(
        ["capture", "download", "--name", "g", "--from-dir", str(tmp_path), "-o", str(out), "--merge"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"g-node-2-{STAMP}.tar.gz: not a readable capture tarball" in err
    assert "Traceback" not in err and not (out / "g-merged.pcapng").exists()
    assert list(out.iterdir()) == []  # no partial output, no scratch left


def test_output_under_a_file_is_one_line(tmp_path, capsys) -> None:
    tarball(tmp_path, "o", "node-1", node_packets()["node-1"])
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    code = main(
        [
            "capture",
            "download",
            "--name",
            "o",
            "--from-dir",
            str(tmp_path),
            "-o",
            str(blocker / "out"),
            "--merge",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.strip() == f"error: {blocker / 'out'}: Not a directory"
