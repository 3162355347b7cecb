"""Where a finished capture tarball goes: host path, PVC, Azure Blob, S3.

``build_outputs(settings)`` returns one writer per requested output; ``write_all`` writes the
tarball to each (network outputs with retries) and reports which failed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from retina_capture.outputs.base import Output, OutputError
from retina_capture.outputs.retry import with_backoff

log = logging.getLogger(__name__)

__all__ = ["Output", "OutputError", "WriteReport", "build_outputs", "write_all"]


def build_outputs(settings) -> list[Output]:
    """One writer per output requested in ``settings`` (a ``CaptureSettings``)."""
    outputs: list[Output] = []
    if settings.host_path is not None:
        from retina_capture.outputs.local import HostPathOutput

        outputs.append(HostPathOutput(settings.host_path_base, settings.host_path))
    if settings.pvc_mount_path is not None:
        from retina_capture.outputs.local import PvcOutput

        outputs.append(PvcOutput(settings.pvc_mount_path))
    if settings.blob_upload is not None:
        from retina_capture.outputs.blob import BlobOutput

        outputs.append(BlobOutput(settings.blob_upload))
    if settings.s3_bucket is not None:
        from retina_capture.outputs.s3 import S3Output

        outputs.append(
            S3Output(
                bucket=settings.s3_bucket,
                region=settings.s3_region,
                endpoint=settings.s3_endpoint,
                path=settings.s3_path,
                access_key_id=settings.s3_access_key_id or "",
                secret_access_key=settings.s3_secret_access_key or "",
            )
        )
    return outputs


@dataclass
class WriteReport:
    written: dict[str, str] = field(default_factory=dict)  # output name -> location
    failed: dict[str, str] = field(default_factory=dict)  # output name -> error message


def write_all(outputs: list[Output], tarball: Path, *, attempts: int, backoff: float) -> WriteReport:
    report = WriteReport()
    for out in outputs:
        tries = attempts if out.retry else 1
        try:
            where = with_backoff(
                lambda out=out: out.write(tarball),
                what=f"{out.name} upload",
                attempts=tries,
                first_delay=backoff,
            )
        except Exception as exc:
            message = str(exc) if isinstance(exc, OutputError) else f"{type(exc).__name__}: {exc}"
            if tries > 1:
                message += f" (gave up after {tries} attempts)"
            report.failed[out.name] = message
            log.error("%s output %s failed: %s", out.name, out.describe(), message)
            continue
        report.written[out.name] = where
        log.info("%s output: wrote %s", out.name, where)
    return report
