# Copyright: retina-onprem contributors
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Read-only access to a host's procfs, sysfs, /boot and /lib/modules, live or from a tree.

``HostView("/")`` is the running host. ``HostView("/some/tree")`` reads the same relative paths
from a copy of another host (the ``--root`` mode), so kernels we do not run can be audited from
fixtures. Symlinks inside the tree that point to absolute paths are resolved inside the tree.
Probes that need the live kernel (a netns, the bpf() syscall, loading libbpf) are not possible
in tree mode; a tree may state their results in ``retina-preflight.probes.json`` at its top.
"""

import gzip
import json
import os
from typing import Dict, List, NamedTuple, Optional, Set

from .model import PreflightInputError

PROBES_FILE = "retina-preflight.probes.json"


class Mount(NamedTuple):
    device: str
    mountpoint: str
    fstype: str


class HostView:
    def __init__(self, root: str = "/") -> None:
        self.root = os.path.abspath(root)
        self.live = self.root == "/"

    # -- paths ------------------------------------------------------------------------------
    def path(self, host_path: str) -> str:
        """The real file for an absolute path on the audited host."""
        return os.path.join(self.root, host_path.lstrip("/"))

    def resolve(self, host_path: str) -> str:
        """Follow symlinks the way the audited host would (absolute targets stay in the tree)."""
        if self.live:
            return os.path.realpath(host_path)
        pending = [part for part in host_path.split("/") if part]
        resolved: List[str] = []
        hops = 0
        while pending:
            part = pending.pop(0)
            if part == ".":
                continue
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            real = os.path.join(self.root, *(resolved + [part]))
            if os.path.islink(real) and hops < 40:
                hops += 1
                target = os.readlink(real)
                if os.path.isabs(target):
                    resolved = []
                pending = [p for p in target.split("/") if p] + pending
                continue
            resolved.append(part)
        return os.path.join(self.root, *resolved)

    def exists(self, host_path: str) -> bool:
        return os.path.exists(self.resolve(host_path))

    def isdir(self, host_path: str) -> bool:
        return os.path.isdir(self.resolve(host_path))

    def read_text(self, host_path: str) -> Optional[str]:
        try:
            with open(self.resolve(host_path), encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError:
            return None

    # -- facts ------------------------------------------------------------------------------
    def kernel_release(self) -> Optional[str]:
        text = self.read_text("/proc/sys/kernel/osrelease")
        if text is None and self.live:
            return os.uname().release
        return text.strip() if text else None

    def hostname(self) -> str:
        text = self.read_text("/proc/sys/kernel/hostname")
        if text:
            return text.strip()
        return os.uname().nodename if self.live else os.path.basename(self.root)

    def os_release(self) -> Dict[str, str]:
        text = self.read_text("/etc/os-release") or self.read_text("/usr/lib/os-release") or ""
        values = {}
        for line in text.splitlines():
            if "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip().strip('"')
        return values

    def kernel_config(self) -> Optional[Dict[str, str]]:
        """The running kernel's build config from /proc/config.gz or /boot/config-<release>."""
        text = None
        try:
            with gzip.open(self.resolve("/proc/config.gz"), "rt", encoding="utf-8") as handle:
                text = handle.read()
        except OSError:
            release = self.kernel_release()
            if release:
                text = self.read_text(f"/boot/config-{release}")
        if text is None:
            return None
        config = {}
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("CONFIG_") and "=" in line:
                key, _, value = line.partition("=")
                config[key] = value.strip('"')
            elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
                config[line[2 : -len(" is not set")]] = "n"
        return config

    def mounts(self) -> List[Mount]:
        text = self.read_text("/proc/self/mounts") or self.read_text("/proc/mounts") or ""
        result = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 3:
                result.append(Mount(parts[0], parts[1].replace("\\040", " "), parts[2]))
        return result

    def filesystems(self) -> Set[str]:
        text = self.read_text("/proc/filesystems") or ""
        return {line.split()[-1] for line in text.splitlines() if line.strip()}

    def proc_self_status(self) -> Optional[Dict[str, str]]:
        text = self.read_text("/proc/self/status")
        if text is None:
            return None
        values = {}
        for line in text.splitlines():
            key, _, value = line.partition(":")
            values[key.strip()] = value.strip()
        return values

    def recorded_probes(self) -> Dict[str, dict]:
        """Results of live-only probes recorded for a tree (``retina-preflight.probes.json``).

        Format: ``{"<check id>": {"verdict": "pass|warn|fail", "value": "...", "fix": "..."}}``.
        Ignored on the live host, where the probes run for real.
        """
        if self.live:
            return {}
        try:
            with open(os.path.join(self.root, PROBES_FILE), encoding="utf-8") as handle:
                data = json.load(handle)
        except OSError:
            return {}
        except ValueError as error:
            raise PreflightInputError(f"{PROBES_FILE} in {self.root} is not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise PreflightInputError(f"{PROBES_FILE} must hold a JSON object of check id -> result")
        return data
