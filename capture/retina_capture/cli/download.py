"""``kubectl retina capture download``: fetch a capture's tarballs from the outputs it used.

The Jobs of a capture record their outputs (``retina.sh/capture-outputs``: Secret names,
never secrets). Downloading works from the two remote outputs:

* Azure Blob: the container SAS URL from the Secret (key ``blob-upload-url``); blobs named
  ``<capture>-<node>-<timestamp>UTC.tar.gz``;
* S3 / S3-compatible: bucket, region, endpoint and path from the Job, keys from the Secret.

Host path and PVC outputs stay on the nodes / in the claim: this machine cannot reach them
through the API (no exec or port-forward here), so ``download`` says where they are instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes

from retina_capture import jobs as jobs_mod
from retina_capture import kube


class DownloadError(RuntimeError):
    pass


def _tarball_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(name)}-.+-\d{{14}}UTC\.tar\.gz$")


def outputs_of(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    outputs: dict[str, Any] = {}
    for job in jobs:
        text = (job["metadata"].get("annotations") or {}).get(jobs_mod.ANNOTATION_OUTPUTS)
        if text:
            outputs.update(json.loads(text))
    return outputs


def download(client: kubernetes.client.ApiClient, namespace: str, name: str, out_dir: Path) -> list[Path]:
    """Download every tarball of capture ``name`` into ``out_dir``; returns the files."""
    jobs = kube.list_jobs(client, namespace, name)
    if not jobs:
        raise DownloadError(f"--name: no capture {name!r} in namespace {namespace!r} "
                            "(kubectl retina capture list -A shows them)")
    outputs = outputs_of(jobs)
    out_dir.mkdir(parents=True, exist_ok=True)
    if "s3Upload" in outputs:
        return _from_s3(client, namespace, name, outputs["s3Upload"], out_dir)
    if "blobUpload" in outputs:
        return _from_blob(client, namespace, name, outputs["blobUpload"], out_dir)
    where = []
    if "hostPath" in outputs:
        where.append(f"on each node under {jobs_mod.HOST_PATH_BASE}/{outputs['hostPath']}")
    if "persistentVolumeClaim" in outputs:
        where.append(f"in the PersistentVolumeClaim {outputs['persistentVolumeClaim']!r}")
    raise DownloadError(f"capture {name!r} wrote only to local storage ({'; '.join(where)}); download "
                        "supports the blob and S3 outputs. Copy the files from there (e.g. scp from the "
                        "nodes) and merge them with: kubectl retina capture download --name "
                        f"{name} --from-dir DIR --merge")


def _from_s3(client: kubernetes.client.ApiClient, namespace: str, name: str, s3: dict[str, Any],
             out_dir: Path) -> list[Path]:
    import boto3

    keys = kube.read_secret_data(client, namespace, s3["secretName"])
    s3_client = boto3.client("s3", endpoint_url=s3.get("endpoint"), region_name=s3.get("region"),
                             aws_access_key_id=keys.get(jobs_mod.SECRET_KEY_S3_ID),
                             aws_secret_access_key=keys.get(jobs_mod.SECRET_KEY_S3_SECRET))
    prefix = (s3.get("path") or "").strip("/")
    prefix = f"{prefix}/{name}-" if prefix else f"{name}-"
    pattern = _tarball_re(name)
    files = []
    paginator = s3_client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=s3["bucket"], Prefix=prefix):
        for item in page.get("Contents", []):
            base = item["Key"].rsplit("/", 1)[-1]
            if pattern.match(base):
                target = out_dir / base
                s3_client.download_file(s3["bucket"], item["Key"], str(target))
                files.append(target)
    return sorted(files)


def _from_blob(client: kubernetes.client.ApiClient, namespace: str, name: str, secret: str,
               out_dir: Path) -> list[Path]:
    from azure.storage.blob import ContainerClient

    url = kube.read_secret_data(client, namespace, secret).get(jobs_mod.SECRET_KEY_BLOB)
    if not url:
        raise DownloadError(f"secret {secret!r} has no key {jobs_mod.SECRET_KEY_BLOB!r}")
    pattern = _tarball_re(name)
    files = []
    with ContainerClient.from_container_url(url) as container:
        for blob in container.list_blobs(name_starts_with=f"{name}-"):
            if pattern.match(blob.name):
                target = out_dir / blob.name
                with target.open("wb") as fh:
                    container.download_blob(blob.name).readinto(fh)
                files.append(target)
    return sorted(files)


def local_tarballs(directory: Path, name: str) -> list[Path]:
    pattern = _tarball_re(name)
    return sorted(p for p in directory.iterdir() if pattern.match(p.name))
