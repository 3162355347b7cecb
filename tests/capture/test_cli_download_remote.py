"""``kubectl retina capture download`` from the remote outputs, as the capture user: Azure Blob
(a real Azurite) and, for ``--all``/``-A``, S3 (a real moto server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import boto3
import pytest

from retina_capture.cli.main import main
from retina_capture.cli.merge import read_merged
from tests import kube_fixtures
from tests.capture.test_cli_download import node_packets, tarball
from tests.helpers.capture import AZURITE_ACCOUNT, AZURITE_KEY
from tests.kube_fixtures import CAPTURE_USER, capture_user_kubeconfig_for, refusals_of, small_cluster

kube_emulator = kube_fixtures.kube_emulator


def _sas_url(azurite, container: str) -> str:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(
        AZURITE_ACCOUNT,
        container,
        account_key=AZURITE_KEY,
        permission=ContainerSasPermissions(read=True, list=True, write=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    return f"{azurite.url}/{AZURITE_ACCOUNT}/{container}?{sas}"


def test_download_merge_from_azure_blob(kube_emulator, azurite, tmp_path, capsys, monkeypatch) -> None:
    from azure.storage.blob import BlobServiceClient

    small_cluster(kube_emulator)
    container = BlobServiceClient(
        f"{azurite.url}/{AZURITE_ACCOUNT}", credential=AZURITE_KEY
    ).create_container("caps")
    monkeypatch.setenv("RETINA_CAPTURE_BLOB_UPLOAD", _sas_url(azurite, "caps"))
    kubeconfig = str(capture_user_kubeconfig_for(kube_emulator))
    assert (
        main(
            [
                "capture",
                "create",
                "--name",
                "bl",
                "-n",
                "web",
                "--node-names",
                "node-1,node-2",
                "--no-wait",
                "--kubeconfig",
                kubeconfig,
            ]
        )
        == 0
    ), capsys.readouterr().err

    # What the two workers upload, plus another capture's tarball and a stray blob: both ignored.
    made = tmp_path / "made"
    made.mkdir()
    for node, packets in node_packets().items():
        path = tarball(made, "bl", node, packets)
        container.upload_blob(path.name, path.read_bytes())
    other = tarball(made, "blx", "node-1", node_packets()["node-1"])
    container.upload_blob(other.name, other.read_bytes())
    container.upload_blob("bl-notes.txt", b"x")
    capsys.readouterr()

    out = tmp_path / "out"
    code = main(
        [
            "capture",
            "download",
            "--name",
            "bl",
            "-n",
            "web",
            "-o",
            str(out),
            "--merge",
            "--kubeconfig",
            kubeconfig,
        ]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert sorted(p.name for p in out.iterdir()) == [
        "bl-merged.pcapng",
        "bl-node-1-20260101120000UTC.tar.gz",
        "bl-node-2-20260101120000UTC.tar.gz",
    ]
    for node in ("node-1", "node-2"):
        name = f"bl-{node}-20260101120000UTC.tar.gz"
        assert (out / name).read_bytes() == (made / name).read_bytes()
    assert "merged 5 packets (node-1: 3, node-2: 2)" in printed.out
    assert [p.node for p in read_merged(out / "bl-merged.pcapng")] == [
        "node-1",
        "node-2",
        "node-1",
        "node-2",
        "node-1",
    ]
    assert refusals_of(kube_emulator, CAPTURE_USER) == []


@pytest.fixture
def two_namespaces_in_s3(kube_emulator, moto_s3, tmp_path, capsys, monkeypatch):
    """Captures ``a`` and ``b`` in ``web`` and ``a`` in ``db``, each with its node tarballs in S3."""
    small_cluster(kube_emulator)
    monkeypatch.setenv("RETINA_CAPTURE_S3_ACCESS_KEY_ID", "testing-id")
    monkeypatch.setenv("RETINA_CAPTURE_S3_SECRET_ACCESS_KEY", "testing-secret")
    kubeconfig = str(capture_user_kubeconfig_for(kube_emulator))
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_s3.url,
        region_name="us-east-1",
        aws_access_key_id="testing-id",
        aws_secret_access_key="testing-secret",
    )
    s3.create_bucket(Bucket="caps")
    made = tmp_path / "made"
    made.mkdir()
    for ns, name in (("web", "a"), ("web", "b"), ("db", "a")):
        prefix = f"{ns}/caps"  # one prefix per namespace: both namespaces have a capture "a"
        assert (
            main(
                [
                    "capture",
                    "create",
                    "--name",
                    name,
                    "-n",
                    ns,
                    "--node-names",
                    "node-1,node-2",
                    "--s3-bucket",
                    "caps",
                    "--s3-endpoint",
                    moto_s3.url,
                    "--s3-region",
                    "us-east-1",
                    "--s3-path",
                    prefix,
                    "--no-wait",
                    "--kubeconfig",
                    kubeconfig,
                ]
            )
            == 0
        )
        for node, packets in node_packets().items():
            where = made / ns
            where.mkdir(exist_ok=True)
            path = tarball(where, name, node, packets)
            s3.upload_file(str(path), "caps", f"{prefix}/{path.name}")
    capsys.readouterr()
    return kubeconfig, made


def test_download_all_in_a_namespace(kube_emulator, two_namespaces_in_s3, tmp_path, capsys) -> None:
    kubeconfig, made = two_namespaces_in_s3
    out = tmp_path / "out"
    assert (
        main(
            [
                "capture",
                "download",
                "--all",
                "-n",
                "web",
                "-o",
                str(out),
                "--merge",
                "--kubeconfig",
                kubeconfig,
            ]
        )
        == 0
    ), capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{c}-{n}-20260101120000UTC.tar.gz" for c in "ab" for n in ("node-1", "node-2")]
        + ["a-merged.pcapng", "b-merged.pcapng"]
    )
    for path in (made / "web").iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes()
    assert len(read_merged(out / "b-merged.pcapng")) == 5


def test_download_all_namespaces_keeps_namespaces_apart(
    kube_emulator, two_namespaces_in_s3, tmp_path, capsys
) -> None:
    kubeconfig, made = two_namespaces_in_s3
    out = tmp_path / "out"
    assert main(["capture", "download", "-A", "-o", str(out), "--kubeconfig", kubeconfig]) == 0, (
        capsys.readouterr().err
    )
    assert refusals_of(kube_emulator, CAPTURE_USER) == []
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert got == sorted(str(p.relative_to(made)) for p in made.rglob("*") if p.is_file())
    assert len(got) == 6
    for path in made.rglob("*.tar.gz"):
        assert (out / path.relative_to(made)).read_bytes() == path.read_bytes()

    # list -A shows the same three captures, in Retina's columns.
    capsys.readouterr()
    assert main(["capture", "list", "-A", "--kubeconfig", kubeconfig]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAMESPACE", "CAPTURE", "NAME", "JOBS", "COMPLETIONS", "AGE", "STATUS"]
    assert [(r.split()[0], r.split()[1], r.split()[3]) for r in lines[1:]] == [
        ("db", "a", "0/2"),
        ("web", "a", "0/2"),
        ("web", "b", "0/2"),
    ]


@pytest.mark.parametrize(
    "flags", [[], ["--name", "a", "--all"], ["--all", "-A"], ["--all", "--from-dir", "."]]
)
def test_download_needs_exactly_one_selection(flags, tmp_path, capsys) -> None:
    code = main(["capture", "download", *flags, "-o", str(tmp_path), "--kubeconfig", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2 and "kubeconfig" not in err
    assert ("--from-dir" if "--from-dir" in flags else "--name") in err


@pytest.mark.parametrize("outcome", ["Complete", "Failed"])
def test_cleanup_after_upload_deletes_jobs_and_secret_only_when_every_node_uploaded(
    kube_emulator, tmp_path, capsys, monkeypatch, outcome
) -> None:
    import threading
    import time

    small_cluster(kube_emulator)
    monkeypatch.setenv("RETINA_CAPTURE_S3_ACCESS_KEY_ID", "testing-id")
    monkeypatch.setenv("RETINA_CAPTURE_S3_SECRET_ACCESS_KEY", "testing-secret")
    kubeconfig = str(capture_user_kubeconfig_for(kube_emulator))
    codes: list[int] = []
    run = threading.Thread(
        target=lambda: codes.append(
            main(
                [
                    "capture",
                    "create",
                    "--name",
                    "cu",
                    "-n",
                    "web",
                    "--node-names",
                    "node-1,node-2",
                    "--s3-bucket",
                    "caps",
                    "--s3-endpoint",
                    "http://127.0.0.1:9",
                    "--duration",
                    "5s",
                    "--poll-interval",
                    "0.1",
                    "--cleanup-after-upload",
                    "--kubeconfig",
                    kubeconfig,
                ]
            )
        ),
        daemon=True,
    )
    run.start()
    deadline = time.monotonic() + 30
    while len(kube_emulator.objects("Job", "web")) < 2:
        assert time.monotonic() < deadline and run.is_alive(), capsys.readouterr()
        time.sleep(0.05)
    first, second = (j["metadata"]["name"] for j in kube_emulator.objects("Job", "web"))
    done = {
        "succeeded": 1,
        "startTime": "2026-01-01T00:00:00Z",
        "completionTime": "2026-01-01T00:00:05Z",
        "conditions": [{"type": "Complete", "status": "True"}],
    }
    kube_emulator.set_status("Job", "web", first, done)
    out, err = "", ""
    while "1 running, 1 succeeded" not in out:  # the CLI has seen one node done ...
        assert time.monotonic() < deadline and run.is_alive(), (out, err)
        got = capsys.readouterr()
        out, err = out + got.out, err + got.err
        time.sleep(0.05)
    assert len(kube_emulator.objects("Job", "web")) == 2  # ... and deleted nothing
    failed = {"failed": 1, "conditions": [{"type": "Failed", "status": "True"}]}
    last = done if outcome == "Complete" else failed
    kube_emulator.set_status("Job", "web", second, last)
    run.join(timeout=30)
    assert not run.is_alive()
    got = capsys.readouterr()
    printed = type(got)(out + got.out, err + got.err)
    secrets = [s for s in kube_emulator.objects("Secret", "web") if s["metadata"]["name"].startswith("cu")]
    if outcome == "Complete":
        assert codes == [0], printed.err
        assert "every node uploaded; deleted 2 job(s) and 1 secret(s)" in printed.out
        assert kube_emulator.objects("Job", "web") == [] and secrets == []
    else:  # a node did not upload: its Job (logs) and the Secret stay for a retry or a look
        assert codes == [1]
        assert "not cleaned up: not every node uploaded" in printed.err
        assert len(kube_emulator.objects("Job", "web")) == 2 and len(secrets) == 1
    assert refusals_of(kube_emulator, CAPTURE_USER) == []


def test_cleanup_after_upload_needs_waiting(tmp_path, capsys) -> None:
    code = main(
        [
            "capture",
            "create",
            "--name",
            "cu",
            "--host-path",
            "x",
            "--no-wait",
            "--cleanup-after-upload",
            "-n",
            "web",
            "--kubeconfig",
            str(tmp_path / "none"),
        ]
    )
    assert code == 2 and "--cleanup-after-upload" in capsys.readouterr().err
