# Copyright: retina-onprem contributors
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Per-plugin verdicts: which agent plugins will run on this node, and why not.

This table is the contract with the agent (``retina_agent.plugins``): what each plugin needs.
"""

from __future__ import annotations

from typing import NamedTuple

from .model import FAIL, PASS, SKIP, WARN, CheckResult

# Every eBPF plugin needs these (bcc compiles against the headers, attaches through tracefs/TC).
EBPF_BASE = ("kernel_version", "bpf_syscall", "bcc", "kernel_headers", "tracefs", "bpffs")

AVAILABLE = "available"
DEGRADED = "degraded"
UNAVAILABLE = "unavailable"


class PluginNeeds(NamedTuple):
    ebpf: bool
    needs: tuple[str, ...] = ()  # blocked when one of these fails
    strict: tuple[str, ...] = ()  # blocked when one of these warns or fails
    degrades: tuple[str, ...] = ()  # degraded on warn, blocked on fail
    net_admin: bool = False  # TC needs CAP_NET_ADMIN
    summary: str = ""


PLUGINS = {
    "packetforward": PluginNeeds(
        True, needs=("tc_clsact",), net_admin=True, summary="TC clsact on host interfaces"
    ),
    "dropreason": PluginNeeds(
        True,
        degrades=("tracepoint:skb:kfree_skb", "btf"),
        summary="tracepoint skb:kfree_skb (reason field); BTF for drop bytes and pod attribution",
    ),
    "linuxutil": PluginNeeds(False, summary="procfs, sysfs and ethtool only"),
    "dns": PluginNeeds(
        True, needs=("tc_clsact",), net_admin=True, summary="TC clsact, DNS parsed in the kernel"
    ),
    "tcpretrans": PluginNeeds(
        True, needs=("tracepoint:tcp:tcp_retransmit_skb",), summary="tracepoint tcp:tcp_retransmit_skb"
    ),
    "packetparser": PluginNeeds(
        True, needs=("tc_clsact",), net_admin=True, summary="TC clsact on pod veths (pod-level flows)"
    ),
    "latency": PluginNeeds(
        True, needs=("tc_clsact",), net_admin=True, summary="TC clsact, API-server latency in the kernel"
    ),
}
PLUGIN_NAMES = tuple(PLUGINS)


def _reason(result: CheckResult) -> str:
    return f"{result.id}: {result.value}"


def plugin_verdict(name: str, results: dict[str, CheckResult]) -> dict:
    spec = PLUGINS[name]
    blocked: list[str] = []
    degraded: list[str] = []
    unverified: list[str] = []
    needs = (EBPF_BASE if spec.ebpf else ()) + spec.needs
    for check_id in needs + spec.strict + spec.degrades:
        result = results.get(check_id)
        if result is None:
            continue
        if result.verdict == SKIP:
            unverified.append(check_id)
        elif result.verdict == FAIL or (result.verdict == WARN and check_id in spec.strict):
            blocked.append(_reason(result))
        elif result.verdict == WARN and check_id in spec.degrades:
            degraded.append(_reason(result))
    caps = results.get("capabilities")
    if spec.ebpf and caps is not None:
        if caps.verdict == SKIP:
            unverified.append("capabilities")
        elif caps.detail:
            if not caps.detail.get("bpf"):
                blocked.append("capabilities: neither CAP_BPF+CAP_PERFMON nor CAP_SYS_ADMIN")
            if spec.net_admin and not caps.detail.get("net_admin"):
                blocked.append("capabilities: no CAP_NET_ADMIN")
    if blocked:
        status, verdict, reasons = UNAVAILABLE, FAIL, blocked
    elif degraded:
        status, verdict, reasons = DEGRADED, WARN, degraded
    else:
        status, verdict, reasons = AVAILABLE, PASS, []
    return {
        "name": name,
        "status": status,
        "verdict": verdict,
        "reasons": reasons,
        "unverified": unverified,
        "needs": spec.summary,
    }


def plugin_verdicts(names: tuple[str, ...], results: dict[str, CheckResult]) -> list[dict]:
    return [plugin_verdict(name, results) for name in names]
