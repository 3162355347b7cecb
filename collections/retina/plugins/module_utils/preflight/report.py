# Copyright: retina-onprem contributors
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Run the checks and build the report (a JSON-ready dict), or render it as a table.

Report schema (``schema: retina-preflight/v1``)::

    host:    {hostname, kernel_release, os, root, mode: live|root, python}
    checks:  [{id, title, scope: node|control, verdict: pass|warn|fail|skip, value, fix, detail}]
    plugins: [{name, status: available|degraded|unavailable, verdict, reasons, unverified, needs}]
    summary: {verdict, exit_code, counts: {pass, warn, fail, skip}, failed, warned,
              plugins_available, plugins_degraded, plugins_unavailable}
"""

import os
import sys
from typing import List, NamedTuple, Optional, Tuple

from .catalogue import PLUGIN_NAMES
from .context import NodeContext
from .control import control_checks, validate_grafana_url
from .host import HostView
from .model import EXIT_CODES, FAIL, PASS, SKIP, WARN, CheckResult, PreflightInputError, overall_verdict
from .node import node_checks
from .plugins import AVAILABLE, DEGRADED, UNAVAILABLE, plugin_verdicts

SCHEMA = "retina-preflight/v1"


class PreflightOptions(NamedTuple):
    root: str = "/"
    node: bool = True  # run the node checks
    control_host: bool = False  # run the control-host checks
    kubeconfig: Optional[str] = None
    context: Optional[str] = None
    grafana_url: Optional[str] = None
    plugins: Tuple[str, ...] = PLUGIN_NAMES


def validate(options: PreflightOptions) -> None:
    """Raise PreflightInputError naming the option and the fix."""
    if not options.node and not options.control_host:
        raise PreflightInputError("nothing to check: enable node checks or control_host")
    if options.node:
        root = options.root
        if not os.path.isdir(root):
            raise PreflightInputError(
                f"root {root!r} is not a directory; give the top of a host tree (or / for this host)"
            )
        if os.path.abspath(root) != "/" and not os.path.isfile(
            os.path.join(root, "proc/sys/kernel/osrelease")
        ):
            raise PreflightInputError(
                f"root {root!r} has no proc/sys/kernel/osrelease; a host tree needs at least that file"
            )
    unknown = [name for name in options.plugins if name not in PLUGIN_NAMES]
    if unknown:
        raise PreflightInputError(
            "plugins: unknown plugin(s) {}; choose from {}".format(
                ", ".join(unknown), ", ".join(PLUGIN_NAMES)
            )
        )
    if options.kubeconfig and not os.path.isfile(options.kubeconfig):
        raise PreflightInputError(f"kubeconfig {options.kubeconfig!r} does not exist")
    if options.grafana_url:
        validate_grafana_url(options.grafana_url)
    if not options.plugins and options.node:
        raise PreflightInputError("plugins: give at least one plugin name")


def run_preflight(options: PreflightOptions) -> dict:
    validate(options)
    host = HostView(options.root)
    checks: List[CheckResult] = []
    plugins: List[dict] = []
    host_info = {
        "hostname": host.hostname(),
        "root": host.root,
        "mode": "live" if host.live else "root",
        "python": sys.executable,
        "kernel_release": None,
        "os": None,
    }
    if options.node:
        ctx = NodeContext(host)
        host_info.update(kernel_release=ctx.release, os=ctx.distro)
        checks.extend(node_checks(ctx))
        plugins = plugin_verdicts(tuple(options.plugins), ctx.results)
    if options.control_host:
        checks.extend(control_checks(options.kubeconfig, options.context, options.grafana_url))
    verdict = overall_verdict(c.verdict for c in checks)
    counts = {v: sum(1 for c in checks if c.verdict == v) for v in (PASS, WARN, FAIL, SKIP)}
    return {
        "schema": SCHEMA,
        "host": host_info,
        "checks": [c.to_dict() for c in checks],
        "plugins": plugins,
        "summary": {
            "verdict": verdict,
            "exit_code": EXIT_CODES[verdict],
            "counts": counts,
            "failed": [c.id for c in checks if c.verdict == FAIL],
            "warned": [c.id for c in checks if c.verdict == WARN],
            "plugins_available": [p["name"] for p in plugins if p["status"] == AVAILABLE],
            "plugins_degraded": [p["name"] for p in plugins if p["status"] == DEGRADED],
            "plugins_unavailable": [p["name"] for p in plugins if p["status"] == UNAVAILABLE],
        },
    }


def _table(headers: Tuple[str, ...], rows: List[Tuple[str, ...]], width: int = 100) -> List[str]:
    widths = [max(len(str(row[i])) for row in [headers] + rows) for i in range(len(headers))]
    widths[-1] = min(widths[-1], width)
    lines = []
    for row in [headers] + rows:
        cells = [str(cell) for cell in row]
        last = cells[-1]
        if len(last) > widths[-1]:
            last = last[: widths[-1] - 1] + "…"
        cells[-1] = last
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(cells)).rstrip())
    return lines


def render_table(report: dict) -> str:
    host = report["host"]
    lines = [
        "retina-preflight: {} (kernel {}, {}){}".format(
            host["hostname"],
            host["kernel_release"] or "n/a",
            host["os"] or "control host",
            "" if host["mode"] == "live" else ", from tree {}".format(host["root"]),
        ),
        "",
    ]
    lines += _table(
        ("CHECK", "VERDICT", "VALUE"), [(c["id"], c["verdict"].upper(), c["value"]) for c in report["checks"]]
    )
    if report["plugins"]:
        lines.append("")
        rows = []
        for p in report["plugins"]:
            why = "; ".join(p["reasons"]) or p["needs"]
            if p["unverified"]:
                why += " (not verified: {})".format(", ".join(p["unverified"]))
            rows.append((p["name"], p["status"], why))
        lines += _table(("PLUGIN", "STATUS", "WHY / NEEDS"), rows)
    fixes = [c for c in report["checks"] if c["fix"]]
    if fixes:
        lines += ["", "Fixes:"]
        lines += ["  {} [{}]: {}".format(c["id"], c["verdict"], c["fix"]) for c in fixes]
    summary = report["summary"]
    counts = summary["counts"]
    verdict = summary["verdict"].upper()
    lines += [
        "",
        f"Result: {verdict} (exit {summary['exit_code']}): {counts[PASS]} passed, {counts[WARN]} warnings, "
        f"{counts[FAIL]} failed, {counts[SKIP]} skipped",
    ]
    return "\n".join(lines) + "\n"
