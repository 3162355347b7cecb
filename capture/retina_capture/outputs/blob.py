"""Azure Blob Storage through a container SAS URL (azure-storage-blob).

The SAS URL is a secret: only its scheme, host and path are ever logged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

from azure.storage.blob import ContainerClient

from retina_capture.outputs.base import OutputError

# the SDK logs request URLs at INFO; keep it quiet
logging.getLogger("azure").setLevel(logging.WARNING)


def redact_sas(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" + ("?<SAS redacted>" if parts.query else "")


class BlobOutput:
    name = "blob"
    retry = True

    def __init__(self, sas_url: str, timeout: float = 60):
        self._sas_url = sas_url
        self._timeout = timeout

    def describe(self) -> str:
        return redact_sas(self._sas_url)

    def __repr__(self) -> str:
        return f"BlobOutput({self.describe()})"

    def check(self) -> None:
        pass

    def write(self, tarball: Path) -> str:
        # retry_total=0: the worker's own backoff decides how often to retry
        client = ContainerClient.from_container_url(
            self._sas_url, retry_total=0, connection_timeout=10, read_timeout=self._timeout
        )
        try:
            with client, tarball.open("rb") as fh:
                client.upload_blob(tarball.name, fh, overwrite=True, max_concurrency=2)
        except Exception as exc:
            # SDK messages can quote the request URL; strip any query string from them
            text = str(exc).split("\n")[0]
            if "?" in text and "sig=" in text:
                text = text.split("?")[0] + "?<SAS redacted>"
            raise OutputError(f"blob upload of {tarball.name} failed: {type(exc).__name__}: {text}") from None
        return f"{self.describe().split('?')[0]}/{tarball.name}"
