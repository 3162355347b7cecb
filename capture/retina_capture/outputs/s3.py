"""S3 and S3-compatible stores (MinIO, Ceph RGW, ...) through boto3."""

from __future__ import annotations

import logging
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from retina_capture.outputs.base import OutputError

for _name in ("boto3", "botocore", "s3transfer", "urllib3"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class S3Output:
    name = "s3"
    retry = True

    def __init__(
        self,
        *,
        bucket: str,
        access_key_id: str,
        secret_access_key: str,
        region: str | None = None,
        endpoint: str | None = None,
        path: str = "",
    ):
        self.bucket, self.region, self.endpoint = bucket, region, endpoint
        self.prefix = path.strip("/")
        self._keys = (access_key_id, secret_access_key)

    def __repr__(self) -> str:
        return f"S3Output({self.describe()})"

    def describe(self) -> str:
        where = self.endpoint or "aws"
        return f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''} at {where}"

    def key_for(self, tarball: Path) -> str:
        return f"{self.prefix}/{tarball.name}" if self.prefix else tarball.name

    def check(self) -> None:
        pass

    def write(self, tarball: Path) -> str:
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self._keys[0],
            aws_secret_access_key=self._keys[1],
            config=Config(retries={"total_max_attempts": 1}, connect_timeout=10, read_timeout=60),
        )
        key = self.key_for(tarball)
        try:
            client.upload_file(
                str(tarball),
                self.bucket,
                key,
                Config=TransferConfig(multipart_chunksize=16 * 1024 * 1024, max_concurrency=4),
            )
        except Exception as exc:
            raise OutputError(f"S3 upload of {tarball.name} failed: {type(exc).__name__}: {exc}") from None
        return f"s3://{self.bucket}/{key}"
