# Copyright: retina-onprem contributors
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Kernel checks: version, BTF, kernel headers (informational: not needed), kprobes."""

import os
import re
from typing import Optional

from .context import NodeContext
from .model import FAIL, PASS, WARN, CheckResult
from .versions import kernel_upstream, minimum

MIN_KERNEL = "5.4"
BTF_PATH = "/sys/kernel/btf/vmlinux"


def check_kernel_version(ctx: NodeContext) -> CheckResult:
    title = f"Kernel version >= {MIN_KERNEL}"
    if ctx.release is None:
        return CheckResult(
            "kernel_version",
            title,
            FAIL,
            "unknown (no /proc/sys/kernel/osrelease)",
            fix="Run on a Linux host (or give --root a tree with proc/sys/kernel/osrelease).",
        )
    if ctx.version is None:
        return CheckResult(
            "kernel_version",
            title,
            FAIL,
            f"{ctx.release} (unparsable)",
            fix="Report this kernel release string; it has no leading major.minor number.",
        )
    detail = {"release": ctx.release, "upstream": kernel_upstream(ctx.release)}
    if ctx.version >= minimum(MIN_KERNEL):
        return CheckResult("kernel_version", title, PASS, ctx.release, detail=detail)
    if ctx.distro_family == "rhel":
        fix = (
            f"Boot a kernel >= {MIN_KERNEL}: on CentOS/RHEL 7 install ELRepo's kernel-lt or kernel-ml, "
            "or move the node to RHEL 8.2+/9."
        )
    elif ctx.distro_family == "debian":
        fix = f"Boot a kernel >= {MIN_KERNEL} (Ubuntu: the HWE kernel; Debian: bullseye or newer)."
    else:
        fix = f"Boot a kernel >= {MIN_KERNEL}."
    return CheckResult(
        "kernel_version",
        title,
        FAIL,
        "{} (upstream {} < {})".format(ctx.release, detail["upstream"], MIN_KERNEL),
        fix=fix,
        detail=detail,
    )


def check_btf(ctx: NodeContext) -> CheckResult:
    title = f"BTF type information ({BTF_PATH})"
    configured = ctx.config_value("CONFIG_DEBUG_INFO_BTF")
    path = ctx.host.resolve(BTF_PATH)
    if os.path.isfile(path):
        size = os.path.getsize(path)
        return CheckResult(
            "btf",
            title,
            PASS,
            f"present ({size} bytes)",
            detail={"present": True, "size": size, "config": configured},
        )
    why = f"CONFIG_DEBUG_INFO_BTF={configured}" if configured else "kernel config unknown"
    return CheckResult(
        "btf",
        title,
        WARN,
        f"missing ({why})",
        fix=(
            "dropreason counts no bytes and attributes no pods. Boot a kernel built "
            "with CONFIG_DEBUG_INFO_BTF=y (Ubuntu 20.10+, Debian 11+, RHEL 8.2+; ELRepo kernel-ml "
            "is built without it)."
        ),
        detail={"present": False, "config": configured},
    )


def _headers_release(ctx: NodeContext, build: str) -> Optional[str]:
    """The release the headers in `build` were made for."""
    text = ctx.host.read_text(build + "/include/generated/utsrelease.h")
    if text:
        match = re.search(r'UTS_RELEASE\s+"([^"]+)"', text)
        if match:
            return match.group(1)
    text = ctx.host.read_text(build + "/include/config/kernel.release")
    if text and text.strip():
        return text.strip()
    real = ctx.host.resolve(build)
    name = os.path.basename(real.rstrip("/"))
    if name.startswith("linux-headers-"):
        return name[len("linux-headers-") :]
    return name if re.match(r"^\d+\.\d+", name) else None


NOT_NEEDED = (
    "not needed: the agent's BPF programs are compiled into its image and take kernel struct "
    "offsets from BTF, so nodes need no kernel headers"
)


def check_kernel_headers(ctx: NodeContext) -> CheckResult:
    """What /lib/modules/<release>/build holds, for information only.

    The agent no longer compiles at start (bcc did, against these headers): its objects are
    built with the image from UAPI headers and read kernel struct offsets from BTF. So missing
    or mismatched headers never block a plugin (a real win on odd kernels: a vendor kernel with
    no headers package runs the agent as is); the check stays so that a report still says what
    the node has, for other BPF tools.
    """
    title = "Kernel headers (not needed by the agent)"
    if ctx.release is None:
        return CheckResult(
            "kernel_headers", title, PASS, f"unknown kernel release; {NOT_NEEDED}", detail={"needed": False}
        )
    build = f"/lib/modules/{ctx.release}/build"
    if not ctx.host.isdir(build):
        state = "dangling link" if os.path.islink(ctx.host.path(build)) else "missing"
        return CheckResult(
            "kernel_headers",
            title,
            PASS,
            f"{build}: {state}; {NOT_NEEDED}",
            detail={"path": build, "present": False, "needed": False},
        )
    found = _headers_release(ctx, build)
    detail = {
        "path": build,
        "present": True,
        "headers_release": found,
        "matching": found == ctx.release,
        "needed": False,
    }
    if found == ctx.release:
        return CheckResult("kernel_headers", title, PASS, f"{build} (matching); {NOT_NEEDED}", detail=detail)
    value = "{} holds headers for {}, kernel is {}; {}".format(
        build, found or "an unknown release", ctx.release, NOT_NEEDED
    )
    return CheckResult("kernel_headers", title, PASS, value, detail=detail)


def check_kprobes(ctx: NodeContext, tracefs_dir: Optional[str]) -> CheckResult:
    title = "kprobes"
    configured = ctx.config_value("CONFIG_KPROBES")
    fix = (
        "No shipped plugin needs kprobes (they use tracepoints and TC); kprobe-based tools "
        "(bpftrace kprobe:, upstream Retina's kprobe programs) need a kernel with CONFIG_KPROBES=y."
    )
    if tracefs_dir and ctx.host.exists(tracefs_dir + "/kprobe_events"):
        return CheckResult(
            "kprobes",
            title,
            PASS,
            f"available ({tracefs_dir}/kprobe_events)",
            detail={"available": True, "config": configured},
        )
    if configured == "y":
        return CheckResult(
            "kprobes",
            title,
            PASS,
            "available (CONFIG_KPROBES=y)",
            detail={"available": True, "config": configured},
        )
    if configured == "n" or tracefs_dir:
        source = "CONFIG_KPROBES is not set" if configured == "n" else "no kprobe_events in tracefs"
        return CheckResult(
            "kprobes",
            title,
            WARN,
            f"unavailable ({source})",
            fix=fix,
            detail={"available": False, "config": configured},
        )
    return CheckResult(
        "kprobes",
        title,
        WARN,
        "unknown (no kernel config and no tracefs)",
        fix=fix,
        detail={"available": None, "config": None},
    )
