"""``kubectl retina capture download`` from the remote outputs, as the capture user: Azure Blob
(a real Azurite) and, for ``--all``/``-A``, S3 (a real moto server)."""

from __future__ import annotations

import threading
import time

import pytest

from retina_capture.cli.merge import read_merged
from tests import kube_fixtures
from tests.helpers.download import (
    MERGED_NODES,
    S3_KEYS,
    STAMP,
    blob_container,
    blob_container_sas_url,
    create_capture,
    kubectl_retina,
    node_packets,
    node_tarballs,
    s3_client,
    s3_options,
    tarball,
)
from tests.kube_fixtures import CAPTURE_USER, capture_user_kubeconfig_for, refusals_of, small_cluster

kube_emulator = kube_fixtures.kube_emulator


def test_download_merge_from_azure_blob(kube_emulator, azurite, tmp_path, capsys, monkeypatch) -> None:
    small_cluster(kube_emulator)
    container = blob_container(azurite, "caps")
    monkeypatch.setenv("RETINA_CAPTURE_BLOB_UPLOAD", blob_container_sas_url(azurite, "caps"))
    kubeconfig = capture_user_kubeconfig_for(kube_emulator)
    create_capture(kubeconfig, "bl", "web", "--node-names", "node-1,node-2")

    # What the two workers upload, plus another capture's tarball and a stray blob: both ignored.
    made = node_tarballs(tmp_path / "made", "bl")
    for path in made:
        container.upload_blob(path.name, path.read_bytes())
    other = tarball(tmp_path / "made", "blx", "node-1", node_packets()["node-1"])
    container.upload_blob(other.name, other.read_bytes())
    container.upload_blob("bl-notes.txt", b"x")

    out = tmp_path / "out"
    code = kubectl_retina(kubeconfig, "download", "--name", "bl", "-n", "web", "-o", str(out), "--merge")
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert sorted(p.name for p in out.iterdir()) == [
        "bl-merged.pcapng",
        f"bl-node-1-{STAMP}.tar.gz",
        f"bl-node-2-{STAMP}.tar.gz",
    ]
    for path in made:
        assert (out / path.name).read_bytes() == path.read_bytes()
    assert "merged 5 packets (node-1: 3, node-2: 2)" in printed.out
    assert [p.node for p in read_merged(out / "bl-merged.pcapng")] == MERGED_NODES
    assert refusals_of(kube_emulator, CAPTURE_USER) == []


@pytest.fixture
def two_namespaces_in_s3(kube_emulator, moto_s3, tmp_path, monkeypatch):
    """Captures ``a`` and ``b`` in ``web`` and ``a`` in ``db``, each with its node tarballs in S3."""
    small_cluster(kube_emulator)
    for key, value in S3_KEYS.items():
        monkeypatch.setenv(key, value)
    kubeconfig = capture_user_kubeconfig_for(kube_emulator)
    s3 = s3_client(moto_s3)
    s3.create_bucket(Bucket="caps")
    made = tmp_path / "made"
    for ns, name in (("web", "a"), ("web", "b"), ("db", "a")):
        prefix = f"{ns}/caps"  # one prefix per namespace: both namespaces have a capture "a"
        create_capture(
            kubeconfig, name, ns, "--node-names", "node-1,node-2", *s3_options(moto_s3, "--s3-path", prefix)
        )
        for path in node_tarballs(made / ns, name):
            s3.upload_file(str(path), "caps", f"{prefix}/{path.name}")
    return kubeconfig, made


def test_download_all_in_a_namespace(kube_emulator, two_namespaces_in_s3, tmp_path, capsys) -> None:
    kubeconfig, made = two_namespaces_in_s3
    out = tmp_path / "out"
    code = kubectl_retina(kubeconfig, "download", "--all", "-n", "web", "-o", str(out), "--merge")
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{c}-{n}-{STAMP}.tar.gz" for c in "ab" for n in ("node-1", "node-2")]
        + ["a-merged.pcapng", "b-merged.pcapng"]
    )
    for path in (made / "web").iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes()
    for capture in "ab":  # each merge holds its own capture's packets, not the other's nor db's
        assert [p.node for p in read_merged(out / f"{capture}-merged.pcapng")] == MERGED_NODES


def test_download_all_namespaces_keeps_namespaces_apart(
    kube_emulator, two_namespaces_in_s3, tmp_path, capsys
) -> None:
    kubeconfig, made = two_namespaces_in_s3
    out = tmp_path / "out"
    assert kubectl_retina(kubeconfig, "download", "-A", "-o", str(out)) == 0, capsys.readouterr().err
    assert refusals_of(kube_emulator, CAPTURE_USER) == []
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert got == sorted(
        f"{ns}/{c}-{n}-{STAMP}.tar.gz"
        for ns, c in (("web", "a"), ("web", "b"), ("db", "a"))
        for n in ("node-1", "node-2")
    )
    for path in made.rglob("*.tar.gz"):
        assert (out / path.relative_to(made)).read_bytes() == path.read_bytes()

    # list -A shows the same three captures, in Retina's columns.
    capsys.readouterr()
    assert kubectl_retina(kubeconfig, "list", "-A") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAMESPACE", "CAPTURE", "NAME", "JOBS", "COMPLETIONS", "AGE", "STATUS"]
    assert [(r.split()[0], r.split()[1], r.split()[3]) for r in lines[1:]] == [
        ("db", "a", "0/2"),
        ("web", "a", "0/2"),
        ("web", "b", "0/2"),
    ]


ONE_SELECTION = (
    "--name: give the capture's --name, or --all (every capture in the namespace), or -A/--all-namespaces"
)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], ONE_SELECTION),
        (["--name", "a", "--all"], f"{ONE_SELECTION} (not --name and --all together)"),
        (["--all", "-A"], f"{ONE_SELECTION} (not --all and -A together)"),
        (["--all", "--from-dir", "."], "--from-dir: merges one capture; give its --name"),
    ],
)
def test_download_needs_exactly_one_selection(flags, message, tmp_path, capsys) -> None:
    """A usage error naming the flags, before any kubeconfig is read (there is none here)."""
    code = kubectl_retina(tmp_path / "none", "download", *flags, "-o", str(tmp_path))
    assert (code, capsys.readouterr().err) == (2, f"error: {message}\n")


@pytest.mark.parametrize("outcome", ["Complete", "Failed"])
def test_cleanup_after_upload_deletes_jobs_and_secret_only_when_every_node_uploaded(
    kube_emulator, tmp_path, capsys, monkeypatch, outcome
) -> None:
    small_cluster(kube_emulator)
    for key, value in S3_KEYS.items():
        monkeypatch.setenv(key, value)
    kubeconfig = capture_user_kubeconfig_for(kube_emulator)
    codes: list[int] = []
    create = ["create", "--name", "cu", "-n", "web", "--node-names", "node-1,node-2", "--s3-bucket", "caps"]
    waiting = ["--s3-endpoint", "http://127.0.0.1:9", "--duration", "5s", "--poll-interval", "0.1"]
    run = threading.Thread(
        target=lambda: codes.append(kubectl_retina(kubeconfig, *create, *waiting, "--cleanup-after-upload")),
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
    code = kubectl_retina(
        tmp_path / "none",
        "create",
        "--name",
        "cu",
        "-n",
        "web",
        "--host-path",
        "x",
        "--no-wait",
        "--cleanup-after-upload",
    )
    assert code == 2 and "--cleanup-after-upload" in capsys.readouterr().err
