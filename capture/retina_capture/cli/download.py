"""``kubectl retina capture download``: fetch a capture's tarballs from the outputs it used.

The Jobs of a capture record their outputs (``retina.sh/capture-outputs``: Secret names,
never secrets). Downloading works from every output:

* Azure Blob: the container SAS URL from the Secret (key ``blob-upload-url``); blobs named
  ``<capture>-<node>-<timestamp>UTC.tar.gz``;
* S3 / S3-compatible: bucket, region, endpoint and path from the Job, keys from the Secret;
* host path and PVC: a short-lived pod where the files are, streamed back through ``pods/exec``
  (:mod:`retina_capture.cli.download_pod`), as Retina's download does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes

from retina_capture import jobs as jobs_mod
from retina_capture import kube
from retina_capture.cli import download_pod
from retina_capture.credentials import SECRET_KEY_BLOB, SECRET_KEY_S3_ID, SECRET_KEY_S3_SECRET


class DownloadError(RuntimeError):
    pass


def _tarball_re(name: str) -> re.Pattern[str]:
    """``<capture>-<node>-<YYYYMMDDHHMMSS>UTC.tar.gz``: one file name, never a path."""
    return re.compile(rf"^{re.escape(name)}-[^/\\\0]+-\d{{14}}UTC\.tar\.gz$")


@dataclass
class DownloadResult:
    files: list[Path] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # remote name (or node) -> why not written


def local_name(remote: str, pattern: re.Pattern[str], out_dir: Path, result: DownloadResult) -> Path | None:
    """Where a remote object may be written: ``out_dir / <base name>``, or None.

    Remote names come from whoever can write to the bucket: only the last path part is used and
    it must be a capture tarball name (other objects are not ours and are skipped quietly); a name
    with ``..`` or ``\\`` in it, or a second object with the same base name, is refused and
    recorded in ``result.refused``.
    """
    parts = remote.split("/")
    if ".." in parts or "\\" in remote or "\0" in remote:
        result.refused[remote] = "the name points outside its folder; not written"
        return None
    base = parts[-1]
    if not pattern.match(base):
        return None
    target = out_dir / base
    if target in result.files:
        result.refused[remote] = f"another object was already saved as {base}"
        return None
    return target


def outputs_of(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    outputs: dict[str, Any] = {}
    for job in jobs:
        text = (job["metadata"].get("annotations") or {}).get(jobs_mod.ANNOTATION_OUTPUTS)
        if text:
            outputs.update(json.loads(text))
    return outputs


def download(
    client: kubernetes.client.ApiClient,
    namespace: str,
    name: str,
    out_dir: Path,
    *,
    pod_start_timeout: float = download_pod.START_TIMEOUT_SECONDS,
) -> DownloadResult:
    """Download every tarball of capture ``name`` into ``out_dir``; returns the files and what was refused."""
    jobs = kube.list_jobs(client, namespace, name)
    if not jobs:
        raise DownloadError(
            f"--name: no capture {name!r} in namespace {namespace!r} "
            "(kubectl retina capture list -A shows them)"
        )
    outputs = outputs_of(jobs)
    out_dir.mkdir(parents=True, exist_ok=True)
    if "s3Upload" in outputs:
        return _from_s3(client, namespace, name, outputs["s3Upload"], out_dir)
    if "blobUpload" in outputs:
        return _from_blob(client, namespace, name, outputs["blobUpload"], out_dir)
    found = download_pod.sources(jobs, outputs)
    if not found:
        raise DownloadError(f"capture {name!r} names no output to download from")
    fetched = download_pod.fetch(client, namespace, name, found, out_dir, start_timeout=pod_start_timeout)
    return DownloadResult(files=fetched.files, refused=fetched.problems)


def _from_s3(
    client: kubernetes.client.ApiClient, namespace: str, name: str, s3: dict[str, Any], out_dir: Path
) -> DownloadResult:
    import boto3

    keys = kube.read_secret_data(client, namespace, s3["secretName"])
    s3_client = boto3.client(
        "s3",
        endpoint_url=s3.get("endpoint"),
        region_name=s3.get("region"),
        aws_access_key_id=keys.get(SECRET_KEY_S3_ID),
        aws_secret_access_key=keys.get(SECRET_KEY_S3_SECRET),
    )
    prefix = (s3.get("path") or "").strip("/")
    prefix = f"{prefix}/{name}-" if prefix else f"{name}-"
    pattern = _tarball_re(name)
    result = DownloadResult()
    paginator = s3_client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=s3["bucket"], Prefix=prefix):
        for item in page.get("Contents", []):
            target = local_name(item["Key"], pattern, out_dir, result)
            if target is not None:
                s3_client.download_file(s3["bucket"], item["Key"], str(target))
                result.files.append(target)
    result.files.sort()
    return result


def _from_blob(
    client: kubernetes.client.ApiClient, namespace: str, name: str, secret: str, out_dir: Path
) -> DownloadResult:
    from azure.storage.blob import ContainerClient

    url = kube.read_secret_data(client, namespace, secret).get(SECRET_KEY_BLOB)
    if not url:
        raise DownloadError(f"secret {secret!r} has no key {SECRET_KEY_BLOB!r}")
    pattern = _tarball_re(name)
    result = DownloadResult()
    with ContainerClient.from_container_url(url) as container:
        for blob in container.list_blobs(name_starts_with=f"{name}-"):
            target = local_name(blob.name, pattern, out_dir, result)
            if target is None:
                continue
            partial = target.with_name(target.name + ".part")
            with partial.open("wb") as fh:
                container.download_blob(blob.name).readinto(fh)
            partial.replace(target)
            result.files.append(target)
    result.files.sort()
    return result


def local_tarballs(directory: Path, name: str) -> list[Path]:
    pattern = _tarball_re(name)
    return sorted(p for p in directory.iterdir() if pattern.match(p.name))
