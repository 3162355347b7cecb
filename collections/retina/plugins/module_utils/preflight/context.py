# Copyright: retina-onprem contributors
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""What the node checks share: the host view, facts read once, and earlier results."""

from typing import Any, Dict, List, Optional, Set

from .host import PROBES_FILE, HostView, Mount
from .model import FAIL, PASS, SKIP, WARN, CheckResult, PreflightInputError
from .versions import parse_version


class NodeContext:
    def __init__(self, host: HostView) -> None:
        self.host = host
        self.release: Optional[str] = host.kernel_release()
        self.version: Any = None
        if self.release:
            try:
                self.version = parse_version(self.release)
            except ValueError:
                self.version = None
        self.config: Optional[Dict[str, str]] = host.kernel_config()
        self.os = host.os_release()
        self.mounts: List[Mount] = host.mounts()
        self.filesystems: Set[str] = host.filesystems()
        self.probes = host.recorded_probes()
        self.results: Dict[str, CheckResult] = {}

    @property
    def distro(self) -> str:
        return self.os.get("PRETTY_NAME") or self.os.get("NAME") or "unknown distribution"

    @property
    def distro_family(self) -> str:
        """debian, rhel or other: picks the package manager named in fixes."""
        ids = ("{} {}".format(self.os.get("ID", ""), self.os.get("ID_LIKE", ""))).lower().split()
        if any(i in ("debian", "ubuntu") for i in ids):
            return "debian"
        if any(i in ("rhel", "centos", "fedora", "rocky", "almalinux", "ol") for i in ids):
            return "rhel"
        return "other"

    def config_value(self, key: str) -> Optional[str]:
        return None if self.config is None else self.config.get(key)

    def mount_of(self, fstype: str, mountpoints: tuple) -> Optional[Mount]:
        for mount in self.mounts:
            if mount.fstype == fstype and mount.mountpoint in mountpoints:
                return mount
        for mount in self.mounts:
            if mount.fstype == fstype:
                return mount
        return None

    def verdict(self, check_id: str) -> Optional[str]:
        result = self.results.get(check_id)
        return None if result is None else result.verdict

    def live_only(self, check_id: str, title: str) -> Optional[CheckResult]:
        """In --root mode: the recorded probe result for check_id, else a skip. None when live."""
        if self.host.live:
            return None
        recorded = self.probes.get(check_id)
        if recorded is None:
            return CheckResult(check_id, title, SKIP, "skipped (--root)", detail={"source": "skipped"})
        verdict = recorded.get("verdict") if isinstance(recorded, dict) else None
        if verdict not in (PASS, WARN, FAIL):
            raise PreflightInputError(
                f"{PROBES_FILE}: {check_id}.verdict must be pass, warn or fail, got {verdict!r}"
            )
        value = recorded.get("value", "")
        return CheckResult(
            check_id,
            title,
            verdict,
            f"{value} (recorded)",
            fix=recorded.get("fix"),
            detail={"source": "recorded"},
        )
