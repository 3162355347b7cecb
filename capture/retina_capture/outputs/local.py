"""Local outputs: a directory under the host-path base, and a mounted PVC."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from retina_capture.outputs.base import OutputError

#: Where a capture Job builds its tarball (the worker's --output-dir-tmp): a hostPath on the node,
#: so a capture whose upload failed, or that tcpdump cut short, outlives its pod. A capture that
#: reached every output is removed from it.
NODE_KEEP_DIR = "/var/log/retina/captures"


def _copy_atomically(tarball: Path, directory: Path) -> Path:
    target = directory / tarball.name
    partial = directory / f".{tarball.name}.part"
    try:
        shutil.copyfile(tarball, partial)
        os.replace(partial, target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return target


def resolve_under(base: str, relative: str) -> Path:
    """``base/relative`` after resolving symlinks, refused if it leaves ``base``."""
    if relative.startswith("/") or ".." in Path(relative).parts:
        raise OutputError(f"--host-path: {relative!r} must be relative and without '..'")
    real_base = Path(os.path.realpath(base))
    target = Path(os.path.realpath(real_base / relative))
    if target != real_base and real_base not in target.parents:
        raise OutputError(f"--host-path: {relative!r} leads outside {base} (through a symlink)")
    return target


class HostPathOutput:
    """``--host-path DIR``: ``<host-path-base>/DIR/<tarball>``, directories created."""

    name = "host-path"
    retry = False

    def __init__(self, base: str, relative: str):
        self.base, self.relative = base, relative

    def describe(self) -> str:
        return str(Path(self.base) / self.relative)

    def check(self) -> None:
        resolve_under(self.base, self.relative)

    def write(self, tarball: Path) -> str:
        directory = resolve_under(self.base, self.relative)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create {directory}: {exc.strerror or exc}") from exc
        resolve_under(self.base, self.relative)  # again: nothing swapped in a symlink meanwhile
        return str(_copy_atomically(tarball, directory))


class PvcOutput:
    """``--pvc-mount-path DIR``: the directory where the Job mounted the claim; must exist."""

    name = "pvc"
    retry = False

    def __init__(self, mount_path: str):
        self.mount_path = Path(mount_path)

    def describe(self) -> str:
        return str(self.mount_path)

    def check(self) -> None:
        if not self.mount_path.is_dir():
            raise OutputError(
                f"--pvc-mount-path: {self.mount_path} is not a directory; "
                "mount the PersistentVolumeClaim there"
            )
        if not os.access(self.mount_path, os.W_OK):
            raise OutputError(f"--pvc-mount-path: {self.mount_path} is not writable")

    def write(self, tarball: Path) -> str:
        self.check()
        return str(_copy_atomically(tarball, self.mount_path))
