"""Podman as these machines need it: the one place that holds the global flags and ulimits.

Rootful Podman runs here once told about the VM's hybrid (v1) cgroups without systemd and its
open-file limit of 20000 (see ../shared/PLATFORM.md, section Containers):

    podman --runtime runc --cgroup-manager=cgroupfs run --ulimit nofile=20000:20000 \
        --ulimit nproc=20000:20000 ...

``podman build`` takes the same global flags and ulimits.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

#: Global flags (before the sub-command).
GLOBAL_FLAGS: tuple[str, ...] = ("--runtime", "runc", "--cgroup-manager=cgroupfs")
#: Flags for ``run`` and ``build``: the VM's hard limits are lower than Podman's defaults.
ULIMITS: tuple[str, ...] = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=20000:20000")


class PodmanError(RuntimeError):
    """A podman command failed; the message holds the command and its stderr."""


def podman_binary() -> str:
    path = shutil.which("podman")
    if path is None:
        raise PodmanError("podman is not installed: run ./scripts/setup.sh (Debian package podman)")
    return path


def podman_argv(*args: str) -> list[str]:
    """``podman <global flags> ARGS...`` as an argv list (never a shell string)."""
    return [podman_binary(), *GLOBAL_FLAGS, *args]


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run podman with this machine's global flags; raise ``PodmanError`` when ``check`` fails."""
    argv = podman_argv(*args)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise PodmanError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-3000:]}")
    return proc


def image_exists(ref: str) -> bool:
    return podman("image", "exists", ref, check=False).returncode == 0


def image_size(ref: str) -> int:
    """The image's size in bytes as ``podman image ls`` reports it."""
    return int(podman("image", "inspect", "--format", "{{.Size}}", ref).stdout.strip())


def remove_containers(names: Sequence[str]) -> None:
    """``podman rm -f`` every named container (missing ones are fine): test finalizers."""
    if names:
        podman("rm", "-f", "--ignore", *names, check=False, timeout=120)
