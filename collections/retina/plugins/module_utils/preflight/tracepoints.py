# Copyright: retina-onprem contributors
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Tracepoints the agent's plugins attach to, and the fields they read (from tracefs formats)."""

import re
from typing import Dict, NamedTuple, Optional, Tuple

from .context import NodeContext
from .model import FAIL, PASS, WARN, CheckResult


class TracepointNeed(NamedTuple):
    system: str
    name: str
    plugin: str
    required_fields: Tuple[str, ...]
    optional_fields: Tuple[str, ...]
    degraded_without: str  # what the plugin loses when an optional field is missing

    @property
    def check_id(self) -> str:
        return f"tracepoint:{self.system}:{self.name}"


# The contract with the agent: what each tracepoint-based plugin reads.
TRACEPOINTS = (
    TracepointNeed(
        "skb",
        "kfree_skb",
        "dropreason",
        ("skbaddr", "location", "protocol"),
        ("reason",),
        "drops are counted, all under reason UNKNOWN (the reason field arrived in 5.17)",
    ),
    # tcpretrans counts by address family: the field arrived after 5.10 (Debian 11's 5.10 lacks it,
    # found by the kernel matrix, docs/kernels.md)
    TracepointNeed("tcp", "tcp_retransmit_skb", "tcpretrans", ("skbaddr", "family"), (), ""),
)

_FIELD = re.compile(r"^\s*field:(?P<decl>[^;]+);")
_SYMBOL = re.compile(r'\{\s*-?\d+\s*,\s*"[A-Z0-9_]+"\s*\}')


def parse_format(text: str) -> Dict[str, str]:
    """``field:enum skb_drop_reason reason;`` -> {"reason": "enum skb_drop_reason"}."""
    fields = {}
    for line in text.splitlines():
        match = _FIELD.match(line)
        if not match:
            continue
        decl = match.group("decl").strip()
        type_part, _, name = decl.rpartition(" ")
        name = name.split("[", 1)[0].lstrip("*")
        if not name.startswith("common_"):
            fields[name] = type_part.strip()
    return fields


def check_tracepoint(ctx: NodeContext, need: TracepointNeed, tracefs: Optional[str]) -> CheckResult:
    title = f"tracepoint {need.system}:{need.name} ({need.plugin})"
    detail = {"plugin": need.plugin, "tracepoint": f"{need.system}:{need.name}"}
    if tracefs is None:
        mountable = ctx.results.get("tracefs")
        hint = "mount -t tracefs nodev /sys/kernel/tracing"
        if mountable is not None and mountable.detail.get("mountable"):
            return CheckResult(
                need.check_id,
                title,
                WARN,
                "not verified: tracefs is mountable but not mounted",
                fix=f"Mount tracefs and re-run to verify the fields: {hint}",
                detail=detail,
            )
        return CheckResult(
            need.check_id, title, FAIL, "no tracefs", fix=f"Enable tracefs: {hint}", detail=detail
        )
    fmt_path = f"{tracefs}/events/{need.system}/{need.name}/format"
    text = ctx.host.read_text(fmt_path)
    if text is None:
        return CheckResult(
            need.check_id,
            title,
            FAIL,
            f"missing ({fmt_path})",
            fix=f"{need.plugin} needs a kernel with this tracepoint (>= 5.4 has it).",
            detail=dict(detail, present=False),
        )
    fields = parse_format(text)
    detail.update(present=True, fields=sorted(fields))
    missing = [f for f in need.required_fields if f not in fields]
    if missing:
        return CheckResult(
            need.check_id,
            title,
            FAIL,
            "present, fields missing: {}".format(", ".join(missing)),
            fix="{} reads {}; boot a kernel whose tracepoint has them.".format(
                need.plugin, ", ".join(need.required_fields)
            ),
            detail=detail,
        )
    lacking = [f for f in need.optional_fields if f not in fields]
    if lacking:
        return CheckResult(
            need.check_id,
            title,
            WARN,
            "present, no {} field".format(", ".join(lacking)),
            fix=f"{need.plugin} is degraded: {need.degraded_without}.",
            detail=detail,
        )
    value = "present, fields: {}".format(", ".join(need.required_fields + need.optional_fields))
    if "reason" in fields:
        names = len(_SYMBOL.findall(text))
        detail["drop_reasons"] = names
        value += f" ({names} drop reasons named by the kernel)"
    return CheckResult(need.check_id, title, PASS, value, detail=detail)
