# Copyright: retina-onprem contributors
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Kernel file systems the agent uses (bpffs, tracefs, debugfs) and the cgroup layout."""

from typing import Optional, Tuple

from .context import NodeContext
from .model import FAIL, PASS, WARN, CheckResult

# check id -> (fstype, usual mount points, mount command, missing verdict, why it matters)
FILESYSTEMS = {
    "bpffs": (
        "bpf",
        ("/sys/fs/bpf",),
        "mount -t bpf bpf /sys/fs/bpf",
        FAIL,
        "the agent pins its maps and programs there",
    ),
    "tracefs": (
        "tracefs",
        ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"),
        "mount -t tracefs nodev /sys/kernel/tracing",
        FAIL,
        "tracepoint formats and attachment need it",
    ),
    "debugfs": (
        "debugfs",
        ("/sys/kernel/debug",),
        "mount -t debugfs nodev /sys/kernel/debug",
        WARN,
        "only older tools reach tracing through /sys/kernel/debug/tracing",
    ),
}


def check_filesystem(ctx: NodeContext, check_id: str) -> CheckResult:
    fstype, mountpoints, command, missing_verdict, why = FILESYSTEMS[check_id]
    title = f"{check_id} mounted or mountable"
    mount = ctx.mount_of(fstype, mountpoints)
    if mount is not None:
        return CheckResult(
            check_id,
            title,
            PASS,
            f"mounted at {mount.mountpoint}",
            detail={"mounted": True, "mountpoint": mount.mountpoint, "mountable": True},
        )
    if fstype in ctx.filesystems and ctx.host.isdir(mountpoints[0]):
        return CheckResult(
            check_id,
            title,
            PASS,
            f"mountable (not mounted; {fstype} is in /proc/filesystems, the agent mounts it)",
            detail={"mounted": False, "mountpoint": None, "mountable": True, "command": command},
        )
    return CheckResult(
        check_id,
        title,
        missing_verdict,
        f"unavailable ({fstype} not in /proc/filesystems)",
        fix=f"Boot a kernel with {fstype} support ({why}); then: {command}",
        detail={"mounted": False, "mountpoint": None, "mountable": False},
    )


def tracefs_dir(ctx: NodeContext) -> Optional[str]:
    """Where tracefs can be read on the audited host (mounted), or None."""
    mount = ctx.mount_of("tracefs", FILESYSTEMS["tracefs"][1])
    if mount is not None:
        return mount.mountpoint
    debugfs = ctx.mount_of("debugfs", ("/sys/kernel/debug",))
    if debugfs is not None and ctx.host.isdir(debugfs.mountpoint + "/tracing/events"):
        return debugfs.mountpoint + "/tracing"
    return None


def _cgroup_layout(ctx: NodeContext) -> Tuple[str, str]:
    v2 = [m for m in ctx.mounts if m.fstype == "cgroup2"]
    v1 = [m for m in ctx.mounts if m.fstype == "cgroup"]
    if any(m.mountpoint == "/sys/fs/cgroup" for m in v2) and not v1:
        return "v2", "cgroup2 unified hierarchy at /sys/fs/cgroup"
    if v1 and v2:
        return "hybrid", f"cgroup v1 controllers, cgroup2 at {v2[0].mountpoint}"
    if v1:
        return "v1", f"cgroup v1 only ({len(v1)} hierarchies)"
    if v2:
        return "v2", f"cgroup2 at {v2[0].mountpoint}"
    return "none", "no cgroup file system mounted"


def check_cgroup(ctx: NodeContext) -> CheckResult:
    version, description = _cgroup_layout(ctx)
    title = "cgroup version"
    if version == "none":
        return CheckResult(
            "cgroup",
            title,
            WARN,
            description,
            fix="Kubernetes nodes mount cgroups; check that this is the node's mount table.",
            detail={"version": version},
        )
    return CheckResult("cgroup", title, PASS, f"{version} ({description})", detail={"version": version})
