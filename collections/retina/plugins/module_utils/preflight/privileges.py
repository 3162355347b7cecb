# Copyright: retina-onprem contributors
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Capabilities held (CapEff of /proc/self/status) and the memlock limit."""

import re
from typing import List, Optional, Set

from .context import NodeContext
from .model import FAIL, PASS, SKIP, WARN, CheckResult
from .versions import minimum

CAPABILITIES = {
    "CAP_NET_ADMIN": 12,
    "CAP_IPC_LOCK": 14,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_RESOURCE": 24,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
}
# From 5.11 the kernel charges BPF memory to the memory cgroup, not to RLIMIT_MEMLOCK.
MEMCG_ACCOUNTING_KERNEL = "5.11"
MEMLOCK_ENOUGH = 64 * 1024 * 1024


def held_capabilities(cap_eff_hex: str) -> Set[str]:
    mask = int(cap_eff_hex, 16)
    return {name for name, bit in CAPABILITIES.items() if mask >> bit & 1}


def can_bpf(held: Set[str]) -> bool:
    """Loading tracepoint/TC programs: CAP_BPF + CAP_PERFMON (5.8+) or CAP_SYS_ADMIN."""
    return "CAP_SYS_ADMIN" in held or {"CAP_BPF", "CAP_PERFMON"} <= held


def check_capabilities(ctx: NodeContext) -> CheckResult:
    title = "Capabilities held"
    status = ctx.host.proc_self_status()
    if status is None or "CapEff" not in status:
        recorded = ctx.live_only("capabilities", title)
        if recorded is not None:
            return recorded
        return CheckResult(
            "capabilities",
            title,
            FAIL,
            "unknown (no CapEff in /proc/self/status)",
            fix="Run on Linux with procfs mounted.",
        )
    held = held_capabilities(status["CapEff"])
    missing = sorted(set(CAPABILITIES) - held)
    detail = {
        "cap_eff": status["CapEff"],
        "held": sorted(held),
        "missing": missing,
        "bpf": can_bpf(held),
        "net_admin": "CAP_NET_ADMIN" in held,
    }
    value = "held: %s" % (", ".join(sorted(held)) or "none")
    if missing:
        value += "; missing: {}".format(", ".join(missing))
    if not can_bpf(held):
        return CheckResult(
            "capabilities",
            title,
            FAIL,
            value,
            fix="Run the agent as root or grant CAP_BPF+CAP_PERFMON (kernel >= 5.8) or "
            "CAP_SYS_ADMIN, plus CAP_NET_ADMIN for TC plugins.",
            detail=detail,
        )
    if "CAP_NET_ADMIN" not in held:
        return CheckResult(
            "capabilities",
            title,
            WARN,
            value,
            fix="packetforward, dns and packetparser need CAP_NET_ADMIN for TC.",
            detail=detail,
        )
    return CheckResult("capabilities", title, PASS, value, detail=detail)


def _memlock_soft(ctx: NodeContext) -> Optional[str]:
    text = ctx.host.read_text("/proc/self/limits")
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith("Max locked memory"):
            parts: List[str] = re.split(r"\s{2,}", line.strip())
            return parts[1] if len(parts) > 1 else None
    return None


def check_memlock(ctx: NodeContext) -> CheckResult:
    title = "memlock limit"
    soft = _memlock_soft(ctx)
    detail = {"soft_limit": soft}
    if ctx.version is not None and ctx.version >= minimum(MEMCG_ACCOUNTING_KERNEL):
        return CheckResult(
            "memlock",
            title,
            PASS,
            "{} (not used: kernel >= {} charges BPF maps to the memory cgroup)".format(
                soft or "unknown", MEMCG_ACCOUNTING_KERNEL
            ),
            detail=detail,
        )
    if soft is None:
        if ctx.host.live:
            return CheckResult(
                "memlock",
                title,
                WARN,
                "unknown (no /proc/self/limits)",
                fix="Set LimitMEMLOCK=infinity for the container runtime.",
                detail=detail,
            )
        return CheckResult("memlock", title, SKIP, "skipped (--root)", detail=detail)
    if soft == "unlimited" or int(soft) >= MEMLOCK_ENOUGH:
        return CheckResult("memlock", title, PASS, soft, detail=detail)
    caps = ctx.results.get("capabilities")
    if caps is not None and "CAP_SYS_RESOURCE" in caps.detail.get("held", ()):
        return CheckResult(
            "memlock", title, PASS, f"{soft} bytes (libbpf raises it: CAP_SYS_RESOURCE held)", detail=detail
        )
    return CheckResult(
        "memlock",
        title,
        WARN,
        f"{soft} bytes, kernel < {MEMCG_ACCOUNTING_KERNEL} counts BPF maps against it",
        fix=(
            "Grant CAP_SYS_RESOURCE (libbpf then lifts the limit) "
            "or set LimitMEMLOCK=infinity / ulimit -l unlimited."
        ),
        detail=detail,
    )
