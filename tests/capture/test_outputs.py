"""Outputs against real servers: Azurite (Azure Blob) and moto (S3), plus host path and PVC.

Each worker run captures a little loopback-free traffic on a lab pod's veth and writes the
tarball to the host path as well, so the uploaded object can be compared byte for byte.
"""

from __future__ import annotations

import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

from retina_capture.outputs import OutputError
from retina_capture.outputs.local import HostPathOutput
from tests.helpers.capture import AZURITE_ACCOUNT, AZURITE_KEY, only_tarball

pytestmark = pytest.mark.timeout(180)

TARBALL = re.compile(r"up-node-7-\d{14}UTC\.tar\.gz")
S3_KEYS = {
    "RETINA_CAPTURE_S3_ACCESS_KEY_ID": "AKIATESTKEYID12345",
    "RETINA_CAPTURE_S3_SECRET_ACCESS_KEY": "s3cr3t-Access-Key-Value",
}


def worker_args(dirs, lab) -> list[str]:
    return [
        "--name",
        "up",
        "--node-name",
        "node-7",
        "--interfaces",
        lab["a"].host_veth,
        "--duration",
        "2s",
        "--host-path",
        "copy",
        "--host-path-base",
        str(dirs["base"]),
        "--output-dir-tmp",
        str(dirs["tmp"]),
        "--upload-attempts",
        "3",
        "--upload-backoff",
        "200ms",
    ]


def blob_sas_url(server, container: str) -> str:
    service = BlobServiceClient(f"{server.url}/{AZURITE_ACCOUNT}", credential=AZURITE_KEY)
    service.create_container(container)
    sas = generate_container_sas(
        AZURITE_ACCOUNT,
        container,
        account_key=AZURITE_KEY,
        permission=ContainerSasPermissions(write=True, create=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    return f"{server.url}/{AZURITE_ACCOUNT}/{container}?{sas}"


def s3_client(server):
    return boto3.client(
        "s3",
        endpoint_url=server.url,
        region_name="us-east-1",
        aws_access_key_id=S3_KEYS["RETINA_CAPTURE_S3_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_KEYS["RETINA_CAPTURE_S3_SECRET_ACCESS_KEY"],
    )


def assert_no_secret_visible(run, secrets: list[str]) -> None:
    """While the worker runs: not in any command line, not in tcpdump's environment."""
    run.wait_for("capture started")
    args = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    for secret in secrets:
        assert secret not in args
    tcpdumps = [line.split()[0] for line in args.splitlines() if "tcpdump" in line and "up-node-7" in line]
    assert tcpdumps, "no tcpdump seen while capturing"
    for pid in tcpdumps:
        environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        for secret in secrets:
            assert secret not in environ


def test_blob_upload_to_azurite_is_byte_identical(lab, worker, dirs, azurite):
    url = blob_sas_url(azurite, "captures")
    sig = re.search(r"sig=([^&]+)", url).group(1)
    run = worker(worker_args(dirs, lab), {"RETINA_CAPTURE_BLOB_UPLOAD": url})
    assert_no_secret_visible(run, [url, sig])
    assert run.wait(timeout=60) == 0, run.stderr
    assert sig not in run.stderr and "SAS redacted" in run.stderr

    local = only_tarball(dirs["base"] / "copy")
    assert TARBALL.fullmatch(local.name)
    service = BlobServiceClient(f"{azurite.url}/{AZURITE_ACCOUNT}", credential=AZURITE_KEY)
    names = [b.name for b in service.get_container_client("captures").list_blobs()]
    assert names == [local.name]
    data = service.get_blob_client("captures", local.name).download_blob().readall()
    assert data == local.read_bytes()
    assert not list(dirs["tmp"].glob("*.tar.gz")), "the uploaded tarball was not removed from the node"


def test_s3_upload_to_moto_is_byte_identical(lab, worker, dirs, moto_s3):
    s3_client(moto_s3).create_bucket(Bucket="captures")
    run = worker(
        [
            *worker_args(dirs, lab),
            "--s3-bucket",
            "captures",
            "--s3-endpoint",
            moto_s3.url,
            "--s3-region",
            "us-east-1",
            "--s3-path",
            "team/net",
        ],
        S3_KEYS,
    )
    assert_no_secret_visible(run, list(S3_KEYS.values()))
    assert run.wait(timeout=60) == 0, run.stderr
    for secret in S3_KEYS.values():
        assert secret not in run.stderr

    local = only_tarball(dirs["base"] / "copy")
    assert TARBALL.fullmatch(local.name)
    listing = s3_client(moto_s3).list_objects_v2(Bucket="captures")
    assert [o["Key"] for o in listing["Contents"]] == [f"team/net/{local.name}"]
    body = s3_client(moto_s3).get_object(Bucket="captures", Key=f"team/net/{local.name}")["Body"].read()
    assert body == local.read_bytes()


def _assert_kept_and_failed(run, dirs, output: str) -> None:
    assert run.wait(timeout=90) == 1, run.stderr
    assert f"{output} upload failed (attempt 1 of 3)" in run.stderr
    assert f"{output} upload failed (attempt 2 of 3)" in run.stderr
    assert "gave up after 3 attempts" in run.stderr
    kept = re.search(r"the capture was kept on this node at (\S+\.tar\.gz)", run.stderr)
    assert kept, run.stderr
    path = Path(kept.group(1))
    assert path.parent == dirs["tmp"] and TARBALL.fullmatch(path.name) and path.stat().st_size > 0
    assert path.read_bytes() == only_tarball(dirs["base"] / "copy").read_bytes()


def test_blob_server_down_retries_then_keeps_the_file(lab, worker, dirs, azurite):
    url = blob_sas_url(azurite, "captures")
    azurite.stop()
    run = worker(worker_args(dirs, lab), {"RETINA_CAPTURE_BLOB_UPLOAD": url})
    _assert_kept_and_failed(run, dirs, "blob")
    assert re.search(r"sig=([^&]+)", url).group(1) not in run.stderr


def test_s3_server_down_retries_then_keeps_the_file(lab, worker, dirs, moto_s3):
    endpoint = moto_s3.url
    moto_s3.stop()
    run = worker([*worker_args(dirs, lab), "--s3-bucket", "captures", "--s3-endpoint", endpoint], S3_KEYS)
    _assert_kept_and_failed(run, dirs, "s3")


def test_pvc_output_writes_into_the_mounted_directory(lab, worker, dirs, tmp_path):
    pvc = tmp_path / "pvc"
    pvc.mkdir()
    run = worker([*worker_args(dirs, lab), "--pvc-mount-path", str(pvc), "--include-metadata", "false"])
    assert run.wait(timeout=60) == 0, run.stderr
    assert only_tarball(pvc).read_bytes() == only_tarball(dirs["base"] / "copy").read_bytes()


def test_host_path_is_created_and_symlink_escapes_are_refused(tmp_path):
    base = tmp_path / "base"
    tarball = tmp_path / "x-n-20260101000000UTC.tar.gz"
    tarball.write_bytes(b"data")
    where = HostPathOutput(str(base), "a/b/c").write(tarball)
    assert Path(where).read_bytes() == b"data" and Path(where).parent == base / "a" / "b" / "c"

    (base / "escape").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OutputError, match="outside"):
        HostPathOutput(str(base), "escape/dir").write(tarball)
    assert not (tmp_path / "elsewhere").exists()
