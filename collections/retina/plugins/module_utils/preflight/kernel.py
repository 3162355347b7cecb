# Copyright: retina-onprem contributors
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Kernel checks: version, BTF, headers for bcc, kprobes."""

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
            f"Boot a kernel >= {MIN_KERNEL}: on CentOS/RHEL 7 install ELRepo's kernel-lt or kernel-ml "
            "(with its -devel headers), or move the node to RHEL 8.2+/9."
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
            "packetparser will not run and kernel headers must match exactly. Boot a kernel built "
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


def _headers_fix(ctx: NodeContext) -> str:
    release = ctx.release or "<release>"
    if ctx.distro_family == "debian":
        return f"apt-get install linux-headers-{release}"
    if ctx.distro_family == "rhel":
        if ".elrepo." in release:
            return "yum --enablerepo=elrepo-kernel install kernel-ml-devel-{}".format(
                release.rsplit(".", 1)[0]
            )
        return f"yum install kernel-devel-{release}"
    return f"Install the kernel headers for {release} so that /lib/modules/{release}/build exists."


def check_kernel_headers(ctx: NodeContext) -> CheckResult:
    """bcc compiles against /lib/modules/<release>/build.

    The agent's BPF C reads only UAPI structs (``__sk_buff``, packet headers) and tracepoint
    fields, and takes kernel struct offsets from BTF, so headers of another release work when
    BTF exists (warn); without BTF a mismatch is not safe (fail).
    """
    title = "Kernel headers for bcc"
    if ctx.release is None:
        return CheckResult("kernel_headers", title, FAIL, "unknown kernel release", fix=_headers_fix(ctx))
    build = f"/lib/modules/{ctx.release}/build"
    if not ctx.host.isdir(build):
        state = "dangling link" if os.path.islink(ctx.host.path(build)) else "missing"
        return CheckResult(
            "kernel_headers",
            title,
            FAIL,
            f"{build}: {state}",
            fix=_headers_fix(ctx),
            detail={"path": build, "present": False},
        )
    found = _headers_release(ctx, build)
    detail = {"path": build, "present": True, "headers_release": found, "matching": found == ctx.release}
    if found == ctx.release:
        return CheckResult("kernel_headers", title, PASS, f"{build} (matching)", detail=detail)
    has_btf = ctx.verdict("btf") == PASS
    value = "{} holds headers for {}, kernel is {}".format(build, found or "an unknown release", ctx.release)
    if has_btf:
        return CheckResult(
            "kernel_headers",
            title,
            WARN,
            value,
            fix=(
                "Usable: the agent reads only UAPI structs and tracepoint fields and takes struct "
                f"offsets from BTF. For exact headers: {_headers_fix(ctx)}"
            ),
            detail=detail,
        )
    return CheckResult(
        "kernel_headers",
        title,
        FAIL,
        value + " and no BTF",
        fix=f"Without BTF the headers must match the running kernel: {_headers_fix(ctx)}",
        detail=detail,
    )


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
