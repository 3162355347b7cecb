# Copyright: retina-onprem contributors
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Per-plugin verdicts: which agent plugins will run on this node, and why not.

What each plugin needs comes from the plugin catalogue (``catalogue.py``), shared with the agent.
"""

from typing import Dict, List, Tuple

from .catalogue import EBPF_CHECKS, PLUGINS
from .model import FAIL, PASS, SKIP, WARN, CheckResult

AVAILABLE = "available"
DEGRADED = "degraded"
UNAVAILABLE = "unavailable"


def _reason(result: CheckResult) -> str:
    return f"{result.id}: {result.value}"


def plugin_verdict(name: str, results: Dict[str, CheckResult]) -> dict:
    spec = PLUGINS[name]
    blocked: List[str] = []
    degraded: List[str] = []
    unverified: List[str] = []
    needs = (EBPF_CHECKS if spec.ebpf else ()) + spec.needs
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
        "needs": spec.hook,
    }


def plugin_verdicts(names: Tuple[str, ...], results: Dict[str, CheckResult]) -> List[dict]:
    return [plugin_verdict(name, results) for name in names]
