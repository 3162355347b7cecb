"""Where a capture's upload credentials come from, and how they stay out of argv and logs.

=============================  ==========================================  ==================
secret                         environment variable                        Secret key (Jobs)
=============================  ==========================================  ==================
Azure Blob SAS URL             ``RETINA_CAPTURE_BLOB_UPLOAD``              ``blob-upload-url``
S3 access key id               ``RETINA_CAPTURE_S3_ACCESS_KEY_ID``         ``s3-access-key-id``
                               (or ``AWS_ACCESS_KEY_ID``)
S3 secret access key           ``RETINA_CAPTURE_S3_SECRET_ACCESS_KEY``     ``s3-secret-access-key``
                               (or ``AWS_SECRET_ACCESS_KEY``)
=============================  ==========================================  ==================

``kubectl-retina`` reads them here (after its Retina-compatible flags) and writes them into a
Secret; the Job hands them to the worker through ``secretKeyRef``; the worker reads them here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

ENV_BLOB = "RETINA_CAPTURE_BLOB_UPLOAD"
ENV_S3_ID = "RETINA_CAPTURE_S3_ACCESS_KEY_ID"
ENV_S3_SECRET = "RETINA_CAPTURE_S3_SECRET_ACCESS_KEY"

SECRET_KEY_BLOB = "blob-upload-url"
SECRET_KEY_S3_ID = "s3-access-key-id"
SECRET_KEY_S3_SECRET = "s3-secret-access-key"

#: env variable -> key in the Kubernetes Secret the Job builder references (secretKeyRef).
SECRET_ENV: dict[str, str] = {
    ENV_BLOB: SECRET_KEY_BLOB,
    ENV_S3_ID: SECRET_KEY_S3_ID,
    ENV_S3_SECRET: SECRET_KEY_S3_SECRET,
}
#: Every variable a secret may arrive in (children of the worker must not inherit them).
ALL_SECRET_ENV = (*SECRET_ENV, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def blob_url_from_env(env: Mapping[str, str]) -> str | None:
    return env.get(ENV_BLOB) or None


def s3_keys_from_env(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(key id, secret key): ours first, then the AWS SDK's names."""
    return (
        env.get(ENV_S3_ID) or env.get("AWS_ACCESS_KEY_ID") or None,
        env.get(ENV_S3_SECRET) or env.get("AWS_SECRET_ACCESS_KEY") or None,
    )


_SECRET_NAME = re.compile(r"secret|key|token|passw|sas|sig|credential|auth|blob-upload", re.IGNORECASE)
_SECRET_VALUE = re.compile(r"[?&](sig|se|sv|X-Amz-[A-Za-z]+)=|://[^/@\s]+:[^/@\s]+@", re.IGNORECASE)
MASK = "***"


def mask_arguments(args: Sequence[str]) -> str:
    """Arguments joined for an error message, values of secret-looking flags replaced by ``***``.

    ``--s3-secret-key=abc`` and ``--s3-secret-key abc`` both show as ``--s3-secret-key=***`` /
    ``--s3-secret-key ***``; a value that looks like a signed URL or carries a password is masked
    whatever its flag.
    """
    shown: list[str] = []
    mask_next = False
    for arg in args:
        if arg.startswith("-") and len(arg) > 1:
            name, eq, value = arg.partition("=")
            secretish = bool(_SECRET_NAME.search(name))
            if eq:
                shown.append(f"{name}={MASK}" if secretish or _SECRET_VALUE.search(value) else arg)
            else:
                shown.append(name)
            mask_next = secretish and not eq
        else:
            shown.append(MASK if mask_next or _SECRET_VALUE.search(arg) else arg)
            mask_next = False
    return " ".join(shown)
