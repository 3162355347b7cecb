"""What every output does: write one finished tarball somewhere, or raise ``OutputError``."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class OutputError(RuntimeError):
    """Writing to an output failed. The message never holds a secret."""


class Output(Protocol):
    #: short name used in logs and errors: host-path, pvc, blob, s3
    name: str
    #: whether a failure is worth retrying (network outputs) or not (local files)
    retry: bool

    def describe(self) -> str:
        """Where the tarballs go, safe to log (no SAS token, no keys)."""
        ...

    def check(self) -> None:
        """Cheap checks before capturing (e.g. the PVC is mounted); raise OutputError."""
        ...

    def write(self, tarball: Path) -> str:
        """Store ``tarball``; return where it went (safe to log)."""
        ...
