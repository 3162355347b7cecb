"""What a guest run shows, checked against what its traffic did, and the docs/kernels.md table.

For every plugin, preflight's verdict is a prediction of the agent's state: ``available`` and
``degraded`` predict ``running``, ``unavailable`` predicts ``unavailable``. For every traffic
phase of the lab the expected counts follow from what was sent (each packet between two pods
enters the node at one veth and leaves at the other: one ingress and one egress count).
"""

from __future__ import annotations

from typing import Any

from retina_agent.verify import LOADED, REFUSED, UNAVAILABLE, refused

PREDICTS_RUNNING = ("available", "degraded")
#: Drop reason the kernel gives each dropping phase (5.17+; before that every drop is UNKNOWN).
PHASE_DROP_REASON = {"udp_dropped": "NETFILTER_DROP", "closed_port": "NO_SOCKET"}
#: Counts that are lower bounds: UNKNOWN (no reason field) takes every skb freed meanwhile.
AT_LEAST = ("UNKNOWN",)


def expected_phases(result: dict) -> dict[str, dict[str, Any]]:
    """Per phase: the counts the agent must show, derived from what the lab sent and saw."""
    phases = result["lab"]["phases"]
    udp, dropped = phases["udp_delivered"], phases["udp_dropped"]
    closed, dns = phases["closed_port"], phases["dns"]
    has_reason = bool(result["kernel"].get("drop_reason_names"))
    reason = (lambda phase: PHASE_DROP_REASON[phase]) if has_reason else (lambda phase: "UNKNOWN")
    # Before 5.17 every kfree_skb is an UNKNOWN drop, the lab's and the rest of the guest's
    # (netlink and loopback buffers freed meanwhile, NOT_SPECIFIED on newer kernels): at least.
    # The netfilter plugin reads db's rule counters: the lab's DROP rule, and nothing else drops.
    return {
        "udp_delivered": {
            "forward": {"ingress": udp["sent"], "egress": udp["sent"]},
            "netfilter": {"drops": 0},
        },
        # dropped in db's INPUT chain, after the bridge forwarded it: ingress at web's veth and
        # egress at db's veth both saw it
        "udp_dropped": {
            "forward": {"ingress": dropped["sent"], "egress": dropped["sent"]},
            "drops": {reason("udp_dropped"): dropped["iptables_dropped"]},
            "netfilter": {"drops": dropped["iptables_dropped"]},
        },
        # a SYN and the RST back, per connect (the kernel refuses it: no rule involved)
        "closed_port": {
            "forward": {"ingress": 2 * closed["connects"], "egress": 2 * closed["connects"]},
            "drops": {reason("closed_port"): closed["connects"]},
            "netfilter": {"drops": 0},
        },
        "dns": {
            "forward": {"ingress": 2 * dns["queries"], "egress": 2 * dns["queries"]},
            "dns": {"request": dns["queries"], "response": dns["queries"]},
            "dns_rcodes": {"NOERROR": dns["noerror"], "NXDOMAIN": dns["nxdomain"]},
            "netfilter": {"drops": 0},
        },
    }


def compare_phases(result: dict) -> dict[str, dict[str, dict[str, Any]]]:
    """Per phase and quantity: {"expected": ..., "counted": ..., "ok": bool}."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for phase, want in expected_phases(result).items():
        got = result["lab"]["phases"][phase]
        rows = {}
        for quantity, expected in want.items():
            counted = {k: got.get(quantity, {}).get(k, 0) for k in expected}
            at_least = [k for k in expected if k in AT_LEAST]
            rows[quantity] = {
                "expected": expected,
                "counted": counted,
                "at_least": at_least,
                "ok": all(counted[k] >= v if k in at_least else counted[k] == v for k, v in expected.items()),
            }
        out[phase] = rows
    return out


def predictions(result: dict) -> dict[str, dict[str, Any]]:
    """Per plugin: preflight's status, the agent's state and reason, and whether they agree."""
    pre = {p["name"]: p for p in result["preflight"]["report"]["plugins"]}
    agent = result["lab"]["plugins"]
    out = {}
    for name in sorted(set(pre) | set(agent)):
        status = pre.get(name, {}).get("status", "(not checked)")
        state = agent.get(name, {}).get("state", "(not started)")
        out[name] = {
            "preflight": status,
            "preflight_reasons": pre.get(name, {}).get("reasons", []),
            "agent": state,
            "agent_reason": agent.get(name, {}).get("reason", ""),
            "correct": (status in PREDICTS_RUNNING) == (state == "running"),
        }
    return out


def tc_attach(lab: dict) -> str:
    """How the data path is attached: the agent's ``attach`` label on its running TC plugins,
    checked against what the guest's kernel showed (cls_bpf filters, TCX links)."""
    said = sorted({p.get("attach", "") for p in lab["plugins"].values() if p.get("attach")})
    seen = lab.get("tc_mode", [])
    if said == seen:
        return ", ".join(said) or "none"
    return f"agent says {', '.join(said) or 'none'}, kernel shows {', '.join(seen) or 'none'}"


def verifier(result: dict) -> dict[str, Any] | None:
    """The verifier phase (``retina_agent.verify`` in the guest): per configuration the plugins
    loaded, unavailable (with the plugin's reason) and refused (with the verifier's words).
    None for a run from before the phase."""
    phase = result.get("verifier")
    if phase is None:
        return None
    if "error" in phase:
        return {"error": phase["error"], "refused": {"(phase)": {"*": phase["error"]}}}
    configs = phase["configurations"]

    def named(entry: dict, state: str) -> dict[str, str]:
        return {p: r["reason"] for p, r in entry.get("plugins", {}).items() if r["state"] == state}

    return {
        "seconds": phase["seconds"],
        "configurations": len(configs),
        "loads": sum(1 for e in configs.values() if not e.get("same_as") and not e.get("error")),
        "refused": refused(configs),
        "per_configuration": {
            name: {
                "same_as": e.get("same_as"),
                "error": e.get("error"),
                "loaded": sorted(named(e, LOADED)),
                "unavailable": named(e, UNAVAILABLE),
                "refused": named(e, REFUSED),
            }
            for name, e in configs.items()
        },
    }


def verifier_surprises(result: dict, unavailable: set[str]) -> list[str]:
    """What the verifier phase showed that was not predicted, one line per configuration and
    plugin, naming both and the words: every plugin with BPF programs must load, except those in
    ``unavailable`` (preflight's prediction for this kernel), which must say why instead, and
    a pod-level-only plugin in a configuration without pod level (its reason names
    enablePodLevel). Empty: every configuration as predicted."""
    phase = result.get("verifier")
    if phase is None:
        return ["no verifier phase in this run"]
    if "error" in phase:
        return [f"the verifier phase failed: {phase['error'].strip()[-1500:]}"]
    out = []
    for name, entry in phase["configurations"].items():
        if entry.get("error"):
            out.append(f"{name}: the agent refused the configuration: {entry['error']}")
            continue
        pod_level = bool(entry["config"].get("enablePodLevel"))
        for plugin, r in entry["plugins"].items():
            state, reason = r["state"], r["reason"]
            if state == REFUSED:
                out.append(f"{name}: {plugin} refused: {reason}")
            elif state == UNAVAILABLE and plugin not in unavailable:
                if not (not pod_level and "enablePodLevel" in reason):
                    out.append(f"{name}: {plugin} unavailable, not predicted: {reason}")
            elif state == LOADED and plugin in unavailable:
                out.append(f"{name}: {plugin} loaded, predicted unavailable")
    return out


def summarize(result: dict) -> dict[str, Any]:
    """The per-kernel report (what docs/kernels.md shows and the tests assert)."""
    host, kernel = result["host"], result.get("kernel", {})
    summary: dict[str, Any] = {
        "kernel": host["kernel"],
        "package": host["package"],
        "package_version": host["package_version"],
        "release": kernel.get("release"),
        "error": result.get("error"),
    }
    if "preflight" in result:
        report = result["preflight"]["report"]
        summary["preflight"] = {
            "exit": result["preflight"]["exit"],
            "verdict": report["summary"]["verdict"],
            "checks": {c["id"]: c["verdict"] for c in report["checks"]},
            "values": {c["id"]: c.get("value", "") for c in report["checks"]},
        }
        root = result.get("preflight_root", {}).get("report")
        if root:
            summary["preflight_root_agrees"] = {
                c["id"]: c["verdict"] == summary["preflight"]["checks"].get(c["id"]) for c in root["checks"]
            }
    if "lab" in result:
        lab = result["lab"]
        summary["plugins"] = predictions(result)
        summary["predicted_all"] = all(p["correct"] for p in summary["plugins"].values())
        summary["phases"] = compare_phases(result)
        summary["counts_exact"] = all(q["ok"] for p in summary["phases"].values() for q in p.values())
        summary["drop_reasons_seen"] = lab["drop_reasons_seen"]
        summary["compile"] = lab.get("compile_line")
        summary["agent_ready_seconds"] = lab["agent_ready_seconds"]
        summary["rss_mb"] = round(lab["rss_kb"] / 1024)
        summary["peak_rss_mb"] = round(lab["peak_rss_kb"] / 1024)
        summary["tc_attach"] = tc_attach(lab)
    summary["verifier"] = verifier(result)
    summary["drop_reason_names"] = len(kernel.get("drop_reason_names") or [])
    summary["btf"] = kernel.get("btf")
    summary["boot_seconds"] = host["boot_seconds"]
    summary["accel"] = host["accel"]
    return summary


def _compile_seconds(line: str | None) -> str:
    if not line:
        return "-"
    words = line.split()
    return words[words.index("in") + 1] if "in" in words else line


def _pair(phase: dict, quantity: str, key: str) -> str:
    row = phase[quantity]
    bound = "≥" if key in row.get("at_least", []) else ""
    ok = row["counted"][key] >= row["expected"][key] if bound else row["counted"][key] == row["expected"][key]
    return f"{row['counted'][key]:.0f}/{bound}{row['expected'][key]:.0f}{'' if ok else ' ✗'}"


def _netfilter(phases: dict) -> str:
    """The rule counter's drops in the dropping phase (``-``: a run from before the plugin)."""
    if "netfilter" not in phases["udp_dropped"]:
        return "-"
    return _pair(phases["udp_dropped"], "netfilter", "drops")


def _verified(summary: dict) -> str:
    """The main table's cell: configurations, distinct loads, refusals, time (``-``: no phase)."""
    v = summary.get("verifier")
    if not v:
        return "-"
    if v.get("error"):
        return "phase failed ✗"
    bad = sum(len(p) for p in v["refused"].values())
    return (
        f"{v['configurations']} ({v['loads']} distinct), "
        f"{f'{bad} refused ✗' if bad else 'none refused'}, {v['seconds']:.0f}s"
    )


def _cell(reasons: dict[str, str], limit: int) -> str:
    """``plugin: reason; ...`` for a table cell (no pipes, no new lines); a long reason keeps its
    start and its end (where the verifier says why)."""

    def short(r: str) -> str:
        return r if len(r) <= limit else f"{r[: limit // 2]} … {r[-limit // 2 :]}"

    return "; ".join(f"{p}: {short(r)}".replace("|", "\\|").replace("\n", " ") for p, r in reasons.items())


def _verifier_rows(v: dict) -> list[str]:
    """Each configuration: the plugins loaded, unavailable (why) and refused (the verifier's words)."""
    if v.get("error"):
        return ["The verifier phase failed:", "", "```", v["error"].strip()[-1500:], "```", ""]
    lines = [
        f"Verifier: every configuration of the BPF programs' load-time constants, loaded as the agent "
        f"loads them ({v['configurations']} configurations, {v['loads']} distinct, {v['seconds']:.0f}s):",
        "",
        "| configuration | loaded | unavailable (the plugin's reason) | refused (the verifier's words) |",
        "| --- | --- | --- | --- |",
    ]
    for name, c in v["per_configuration"].items():
        if c["error"]:
            lines.append(f"| {name} | | | {_cell({'agent': c['error']}, 400)} ✗ |")
            continue
        if c["same_as"]:
            lines.append(f"| {name} | the same programs as *{c['same_as']}* | | |")
            continue
        lines.append(
            f"| {name} | {', '.join(c['loaded']) or 'none'} | {_cell(c['unavailable'], 80)} "
            f"| {_cell(c['refused'], 400)}{' ✗' if c['refused'] else ''} |"
        )
    return [*lines, ""]


def markdown(summaries: list[dict[str, Any]], command: str) -> str:
    """docs/kernels.md: one row per kernel, then each kernel's checks and plugins."""
    lines = [
        "# The agent and preflight on Debian's kernels",
        "",
        f"Generated by `{command}`: each kernel booted under qemu with the same Debian 12 root file",
        "system (the agent image's packages: libbpf1, no compiler, no kernel headers; the project's",
        "wheel with its BPF objects compiled at build time), running",
        "`retina-preflight --json`, the agent with every plugin and a small lab (pods web, db, dns on a",
        "bridge; UDP delivered, UDP dropped by iptables, connects to a closed port, DNS to dnsmasq).",
        "The netfilter plugin reads the rule counters of the pod whose iptables rule drops.",
        "Before the lab, every configuration of the BPF programs' load-time constants (each plugin",
        "alone, the default plugins, pod level, ...: `python -m retina_agent.verify`) is loaded as the",
        "agent loads it: the verifier prunes by those constants, so each is a verification of its own.",
        "Counts are `counted/expected` from what the lab sent (✗: they differ; `≥`: a lower bound, for",
        "kernels before 5.17 whose drops all count as UNKNOWN, the lab's and every other skb freed).",
        "",
        "| kernel | package | BTF | preflight | plugins running | preflight predicted | UDP fwd in/out "
        "| iptables drops | netfilter rule counter | closed-port drops | DNS req/resp "
        "| drop reasons (kernel) | attach | BPF load | configurations verified | agent RSS | guest run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
        "| --- |",
    ]
    for s in summaries:
        if "phases" not in s:
            pre = s.get("preflight")
            verdict = f"{pre['verdict']} (exit {pre['exit']})" if pre else "-"
            error = (s.get("error") or "").strip().splitlines()[-1:]
            lines.append(
                f"| {s['kernel']} | {s['package']} {s['package_version']} | {'yes' if s['btf'] else 'no'} "
                f"| {verdict} | lab failed: {error} | | | | | | | | | | {_verified(s)} | | "
                f"{s['boot_seconds']:.0f}s |"
            )
            continue
        p = s["phases"]
        running = [n for n, v in s["plugins"].items() if v["agent"] == "running"]
        pre = s["preflight"]
        flagged = [cid for cid, v in pre["checks"].items() if v in ("warn", "fail")]
        drops = p["udp_dropped"]["drops"]
        closed = p["closed_port"]["drops"]
        drop_key = next(iter(drops["expected"]))
        closed_key = next(iter(closed["expected"]))
        lines.append(
            f"| {s['kernel']} | {s['package']} {s['package_version']} | {'yes' if s['btf'] else 'no'} "
            f"| {pre['verdict']} (exit {pre['exit']}{': ' + ', '.join(flagged) if flagged else ''}) "
            f"| {len(running)}/{len(s['plugins'])} | {'yes' if s['predicted_all'] else 'NO'} "
            f"| {_pair(p['udp_delivered'], 'forward', 'ingress')} "
            f"/ {_pair(p['udp_delivered'], 'forward', 'egress')} "
            f"| {_pair(p['udp_dropped'], 'drops', drop_key)} {drop_key} "
            f"| {_netfilter(p)} "
            f"| {_pair(p['closed_port'], 'drops', closed_key)} {closed_key} "
            f"| {_pair(p['dns'], 'dns', 'request')} / {_pair(p['dns'], 'dns', 'response')} "
            f"| {s['drop_reason_names'] or 'no reason field'} | {s['tc_attach']} "
            f"| {_compile_seconds(s['compile'])} | {_verified(s)} "
            f"| {s['rss_mb']} MB (peak {s['peak_rss_mb']}) | {s['boot_seconds']:.0f}s |"
        )
    for s in summaries:
        lines += ["", f"## {s['kernel']}: {s['package']} {s['package_version']} ({s.get('release')})", ""]
        if s.get("error"):
            lines += ["```", s["error"].strip()[-1500:], "```", ""]
        if "preflight" in s:
            lines += ["| check | verdict | value |", "| --- | --- | --- |"]
            for cid, verdict in s["preflight"]["checks"].items():
                value = s["preflight"]["values"][cid].replace("|", "\\|")
                lines.append(f"| {cid} | {verdict} | {value} |")
            lines.append("")
        if s.get("verifier"):
            lines += _verifier_rows(s["verifier"])
        if "plugins" in s:
            lines += [
                "| plugin | preflight | agent | agent's reason | predicted |",
                "| --- | --- | --- | --- | --- |",
            ]
            for name, v in s["plugins"].items():
                reason = (v["agent_reason"] or "").replace("|", "\\|")
                lines.append(
                    f"| {name} | {v['preflight']} | {v['agent']} | {reason} | "
                    f"{'yes' if v['correct'] else 'NO'} |"
                )
            lines += [
                "",
                f"Drop reasons the agent reported: {', '.join(s['drop_reasons_seen']) or 'none'}; "
                f"attach: {s['tc_attach']}; agent ready after {s['agent_ready_seconds']}s; "
                f"{s['compile'] or ''}; qemu {s['accel']}.",
            ]
    return "\n".join(lines) + "\n"
