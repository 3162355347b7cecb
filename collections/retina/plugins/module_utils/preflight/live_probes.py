# Copyright: retina-onprem contributors
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Checks that can only be made on the running kernel: bpf(), bcc import, TC clsact in a netns.

Each leaves the host as it found it. In --root mode they return the tree's recorded result
or "skipped (--root)" (see NodeContext.live_only).
"""

import ctypes
import errno
import os
import shutil
import sys
import uuid
from typing import List, Optional, Tuple

from .commands import run_command
from .context import NodeContext
from .model import FAIL, PASS, WARN, CheckResult

# bpf(2) syscall numbers per machine (uname -m).
BPF_SYSCALL_NR = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351, "i686": 357, "armv7l": 386}
BPF_MAP_CREATE = 0
BPF_MAP_TYPE_ARRAY = 2
PROBE_TIMEOUT = 20
# Importing bcc maps libbcc and its LLVM (~100 MB): a second on a node, minutes on a slow or
# loaded one (Debian's kernels under emulation took over 20s). Running out of time says nothing
# about bcc, so it is a warning, not a failure that would mark every eBPF plugin unavailable.
BCC_IMPORT_TIMEOUT = 120


def check_bpf_syscall(ctx: NodeContext) -> CheckResult:
    """Create (and close) a one-entry array map: proves bpf() exists and we may use it."""
    title = "bpf() syscall"
    recorded = ctx.live_only("bpf_syscall", title)
    if recorded is not None:
        if recorded.verdict != "skip":
            return recorded
        configured = ctx.config_value("CONFIG_BPF_SYSCALL")
        if configured == "y" or ctx.host.exists("/proc/sys/kernel/unprivileged_bpf_disabled"):
            return CheckResult(
                "bpf_syscall",
                title,
                PASS,
                "built in (CONFIG_BPF_SYSCALL=y; not called: --root)",
                detail={"source": "config"},
            )
        if configured == "n":
            return CheckResult(
                "bpf_syscall",
                title,
                FAIL,
                "CONFIG_BPF_SYSCALL is not set",
                fix="Boot a kernel built with CONFIG_BPF_SYSCALL=y.",
                detail={"source": "config"},
            )
        return recorded
    number = BPF_SYSCALL_NR.get(os.uname().machine)
    if number is None:
        return CheckResult(
            "bpf_syscall",
            title,
            PASS if ctx.config_value("CONFIG_BPF_SYSCALL") == "y" else FAIL,
            f"not probed on {os.uname().machine}",
            fix="Check CONFIG_BPF_SYSCALL=y.",
        )
    attr = (ctypes.c_uint32 * 32)(BPF_MAP_TYPE_ARRAY, 4, 4, 1)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(number, BPF_MAP_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd >= 0:
        os.close(fd)
        return CheckResult("bpf_syscall", title, PASS, "works (created and closed an array map)")
    code = ctypes.get_errno()
    name = errno.errorcode.get(code, str(code))
    if code in (errno.EPERM, errno.EACCES):
        fix = "Run as root or with CAP_BPF (or CAP_SYS_ADMIN)."
    elif code == errno.ENOSYS:
        fix = "Boot a kernel built with CONFIG_BPF_SYSCALL=y."
    else:
        fix = f"bpf(BPF_MAP_CREATE) failed with {name}; check the kernel log and seccomp profile."
    return CheckResult("bpf_syscall", title, FAIL, f"bpf() failed: {name}", fix=fix, detail={"errno": name})


def check_bcc(ctx: NodeContext) -> CheckResult:
    """Import bcc in a child interpreter (it loads libbcc/LLVM; a crash must not take us down)."""
    title = "bcc importable"
    recorded = ctx.live_only("bcc", title)
    if recorded is not None:
        return recorded
    code = "import bcc, sys; sys.stdout.write(getattr(bcc, '__version__', 'unknown version'))"
    fix = {"debian": "apt-get install python3-bpfcc", "rhel": "yum install python3-bcc"}.get(
        ctx.distro_family, "Install bcc's Python bindings (python3-bpfcc / python3-bcc)"
    )
    fix += " (in a virtual environment, link /usr/lib/python3/dist-packages/bcc into site-packages)"
    returncode, out, err = run_command([sys.executable, "-c", code], BCC_IMPORT_TIMEOUT)
    if returncode == 127 and "timed out" in err:
        return CheckResult(
            "bcc",
            title,
            WARN,
            f"import did not finish in {BCC_IMPORT_TIMEOUT}s: not verified (a slow or loaded node?)",
            fix="Re-run preflight when the node is less busy; on slow nodes raise the agent's "
            "bpfCompileTimeout (180s by default)",
            detail={"python": sys.executable, "timeout": BCC_IMPORT_TIMEOUT},
        )
    if returncode == 0:
        return CheckResult(
            "bcc",
            title,
            PASS,
            f"bcc {out} ({sys.executable})",
            detail={"version": out, "python": sys.executable},
        )
    last = (err.splitlines() or [f"exit {returncode}"])[-1]
    return CheckResult(
        "bcc", title, FAIL, f"import failed: {last}", fix=fix, detail={"python": sys.executable}
    )


def _run(argv: List[str]) -> Tuple[bool, str]:
    returncode, out, err = run_command(argv, PROBE_TIMEOUT)
    return returncode == 0, err or out


def check_tc_clsact(ctx: NodeContext) -> CheckResult:
    """Add and remove a clsact qdisc on a veth inside a throw-away network namespace."""
    title = "TC clsact qdisc (tried in a throw-away netns)"
    recorded = ctx.live_only("tc_clsact", title)
    if recorded is not None:
        return recorded
    ip, tc = (
        shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin"),
        shutil.which("tc") or shutil.which("tc", path="/usr/sbin:/sbin"),
    )
    if not ip or not tc:
        return CheckResult(
            "tc_clsact", title, FAIL, "ip/tc not found", fix="Install iproute2 (the probe uses ip and tc)."
        )
    netns = f"retina-preflight-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    steps = [
        ("create netns", [ip, "netns", "add", netns]),
        ("create veth", [ip, "-n", netns, "link", "add", "rpf0", "type", "veth", "peer", "name", "rpf1"]),
        ("link up", [ip, "-n", netns, "link", "set", "rpf0", "up"]),
        ("add clsact", [tc, "-n", netns, "qdisc", "add", "dev", "rpf0", "clsact"]),
        ("show clsact", [tc, "-n", netns, "qdisc", "show", "dev", "rpf0"]),
        ("delete clsact", [tc, "-n", netns, "qdisc", "del", "dev", "rpf0", "clsact"]),
    ]
    failure: Optional[Tuple[str, str]] = None
    created = False
    try:
        for label, argv in steps:
            ok, output = _run(argv)
            if not ok:
                failure = (label, output)
                break
            if label == "create netns":
                created = True
            if label == "show clsact" and "clsact" not in output:
                failure = (label, "clsact not listed after adding it")
                break
    finally:
        if created:
            ok, output = _run([ip, "netns", "delete", netns])
            if not ok and failure is None:
                failure = ("delete netns", output)
    if failure is None:
        return CheckResult(
            "tc_clsact", title, PASS, "usable (added and removed clsact on a veth)", detail={"netns": netns}
        )
    label, output = failure
    if "Operation not permitted" in output:
        fix = "Run with CAP_NET_ADMIN and CAP_SYS_ADMIN (root)."
    elif label == "add clsact":
        fix = "Boot a kernel with CONFIG_NET_SCH_INGRESS (clsact) and CONFIG_NET_CLS_BPF."
    else:
        fix = "The probe could not build its namespace; check iproute2 and CONFIG_VETH/CONFIG_NET_NS."
    return CheckResult("tc_clsact", title, FAIL, f"{label} failed: {output}", fix=fix, detail={"step": label})
