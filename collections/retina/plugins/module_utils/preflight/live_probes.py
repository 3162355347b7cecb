# Copyright: retina-onprem contributors
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Checks that can only be made on the running kernel: bpf(), libbpf, TC clsact in a netns.

Each leaves the host as it found it. In --root mode they return the tree's recorded result
or "skipped (--root)" (see NodeContext.live_only).
"""

import ctypes
import errno
import os
import shutil
import uuid
from typing import List, Optional, Tuple

from .commands import run_command
from .context import NodeContext
from .model import FAIL, PASS, SKIP, CheckResult

# bpf(2) syscall numbers per machine (uname -m).
BPF_SYSCALL_NR = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351, "i686": 357, "armv7l": 386}
BPF_MAP_CREATE = 0
BPF_PROG_LOAD = 5
BPF_MAP_TYPE_ARRAY = 2
BPF_PROG_TYPE_SOCKET_FILTER = 1
# The smallest program the verifier accepts: r0 = 0; exit. Two struct bpf_insn, little-endian
# (code, dst:src, off, imm); every machine in BPF_SYSCALL_NR but s390x is little-endian.
RETURN_ZERO = bytes([0xB7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])
PROBE_TIMEOUT = 20
# The agent loads its BPF objects (compiled when the image is built) with libbpf; the image
# ships it (Debian's libbpf1), the node needs nothing but the kernel.
LIBBPF = "libbpf.so.1"


class _ProgLoadAttr(ctypes.Structure):
    """The head of union bpf_attr for BPF_PROG_LOAD (the kernel zero-fills the rest)."""

    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
    ]


def _bpf_fix(code: int, name: str, what: str) -> str:
    if code in (errno.EPERM, errno.EACCES):
        return "Run as root or with CAP_BPF (or CAP_SYS_ADMIN); check kernel lockdown and seccomp."
    if code == errno.ENOSYS:
        return "Boot a kernel built with CONFIG_BPF_SYSCALL=y."
    return f"bpf({what}) failed with {name}; check the kernel log and seccomp profile."


def check_bpf_syscall(ctx: NodeContext) -> CheckResult:
    """Create a one-entry array map and load a two-instruction program (and close both):
    proves bpf() exists and we may use it as the agent does."""
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
    libc = ctypes.CDLL(None, use_errno=True)
    # A map (the agent's maps) and a program (its objects): both need the bpf() syscall.
    attr = (ctypes.c_uint32 * 32)(BPF_MAP_TYPE_ARRAY, 4, 4, 1)
    fd = libc.syscall(number, BPF_MAP_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    what = "BPF_MAP_CREATE"
    if fd >= 0:
        os.close(fd)
        insns = ctypes.create_string_buffer(RETURN_ZERO, len(RETURN_ZERO))
        license_ = ctypes.create_string_buffer(b"GPL")
        prog = _ProgLoadAttr(
            prog_type=BPF_PROG_TYPE_SOCKET_FILTER,
            insn_cnt=len(RETURN_ZERO) // 8,
            insns=ctypes.addressof(insns),
            license=ctypes.addressof(license_),
        )
        raw = (ctypes.c_uint8 * 128).from_buffer_copy(bytes(prog).ljust(128, b"\0"))
        fd = libc.syscall(number, BPF_PROG_LOAD, ctypes.byref(raw), ctypes.sizeof(raw))
        what = "BPF_PROG_LOAD"
        if fd >= 0:
            os.close(fd)
            return CheckResult(
                "bpf_syscall", title, PASS, "works (created an array map, loaded a socket filter)"
            )
    code = ctypes.get_errno()
    name = errno.errorcode.get(code, str(code))
    return CheckResult(
        "bpf_syscall",
        title,
        FAIL,
        f"bpf({what}) failed: {name}",
        fix=_bpf_fix(code, name, what),
        detail={"errno": name, "command": what},
    )


def check_libbpf(ctx: NodeContext) -> CheckResult:
    """libbpf.so.1 loads (the agent opens its BPF objects with it): in the agent image, or on a
    host running the agent outside one. Nodes running the image need nothing: a skip."""
    title = f"libbpf ({LIBBPF}) for the agent's BPF objects"
    recorded = ctx.live_only("libbpf", title)
    if recorded is not None:
        return recorded
    try:
        lib = ctypes.CDLL(LIBBPF)
    except OSError as exc:
        return CheckResult(
            "libbpf",
            title,
            SKIP,
            f"not on this host ({exc}): nothing to install, the agent image ships it (Debian libbpf1)",
            fix="Only for running retina-agent outside its image: apt-get install libbpf1 (or the "
            "distribution's libbpf >= 1.0).",
            detail={"found": False},
        )
    version = f"{lib.libbpf_major_version()}.{lib.libbpf_minor_version()}"
    return CheckResult(
        "libbpf", title, PASS, f"libbpf {version} ({LIBBPF})", detail={"found": True, "version": version}
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
