"""Preflight and the agent on Debian's 6.1 (bookworm) and 5.10 (bullseye) kernels under qemu.

Each kernel boots once (tests/kernels/conftest.py) and runs retina-preflight, the verifier phase
(every configuration of the BPF programs' load-time constants loaded as the agent loads it), the
agent with every plugin and a lab whose packets are counted on both ends; these tests check what
that run showed.
The same Debian 12 root file system serves both kernels, with the agent image's packages only: no
compiler and no kernel headers (the BPF objects come compiled in the wheel, BTF gives the
kernel's struct offsets), so both run as a node without a headers package would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from retina_agent.config import PLUGIN_NAMES
from retina_agent.verify import configurations
from retina_kernels.report import verifier_surprises

pytestmark = [pytest.mark.slow, pytest.mark.timeout(6000)]

ALL_PLUGINS = set(PLUGIN_NAMES)  # the guest's agent runs every plugin


def _checks(summary: dict) -> dict[str, str]:
    return summary["preflight"]["checks"]


def _warned(result: dict) -> set[str]:
    return set(result["preflight"]["report"]["summary"]["warned"])


def _headers_not_needed(result: dict) -> None:
    """The guest has no kernel headers at all: preflight reports that, as a pass."""
    headers = next(c for c in result["preflight"]["report"]["checks"] if c["id"] == "kernel_headers")
    assert headers["verdict"] == "pass" and headers["detail"]["present"] is False, headers
    assert "not needed" in headers["value"], headers


def _exact(summary: dict) -> None:
    """Every phase's counts equal what the lab sent (report.py derives the expectations)."""
    wrong = {
        phase: {q: (row["counted"], row["expected"]) for q, row in rows.items() if not row["ok"]}
        for phase, rows in summary["phases"].items()
    }
    assert not any(wrong.values()), wrong


def test_61_preflight_passes_and_predicts_every_plugin(matrix) -> None:
    result, summary = matrix["6.1"]
    assert not summary["error"], summary["error"]
    assert summary["release"] == "6.1.0-50-amd64" or summary["release"].startswith("6.1.")
    checks = _checks(summary)
    # no headers in the guest, and nothing to warn about: the agent loads objects with libbpf
    assert _warned(result) == set() and not result["preflight"]["report"]["summary"]["failed"]
    assert summary["preflight"]["exit"] == 0, checks
    _headers_not_needed(result)
    assert checks["btf"] == "pass" and checks["libbpf"] == "pass" and checks["bpf_syscall"] == "pass"
    assert checks["tracepoint:skb:kfree_skb"] == "pass" and checks["kprobes"] == "pass"
    assert checks["tc_clsact"] == "pass"
    plugins = summary["plugins"]
    assert set(plugins) == ALL_PLUGINS
    assert {n: (p["preflight"], p["agent"]) for n, p in plugins.items()} == {
        n: ("available", "running") for n in ALL_PLUGINS
    }
    assert summary["predicted_all"]
    assert summary["tc_attach"] == "cls_bpf"  # no TCX before 6.6: the agent says so, the kernel agrees


def test_61_counts_are_exact_and_drops_carry_the_kernels_reasons(matrix) -> None:
    result, summary = matrix["6.1"]
    _exact(summary)
    lab = result["lab"]["phases"]
    assert lab["udp_delivered"]["received"] == lab["udp_delivered"]["sent"]
    assert lab["udp_dropped"]["iptables_dropped"] == lab["udp_dropped"]["sent"]
    assert lab["closed_port"]["refused"] == lab["closed_port"]["connects"]
    # the names come from this kernel's own enum (tracefs print fmt), not a compiled-in table
    names = result["kernel"]["drop_reason_names"]
    assert {"NETFILTER_DROP", "NO_SOCKET", "NOT_SPECIFIED"} <= set(names)
    assert {"NETFILTER_DROP", "NO_SOCKET"} <= set(summary["drop_reasons_seen"])
    assert "UNKNOWN" not in lab["udp_dropped"]["drops"]


def test_510_dropreason_counts_unknown_and_says_so(matrix) -> None:
    result, summary = matrix["5.10"]
    assert not summary["error"], summary["error"]
    assert summary["release"].startswith("5.10.")
    checks = _checks(summary)
    # 5.10: BTF yes, but skb:kfree_skb has no reason field (5.17). No headers in the guest: with
    # bcc that was a warning (6.1's headers on 5.10), now it is not needed and no longer warned.
    assert checks["btf"] == "pass"
    assert checks["tracepoint:skb:kfree_skb"] == "warn"
    assert "no reason field" in summary["preflight"]["values"]["tracepoint:skb:kfree_skb"]
    _headers_not_needed(result)
    assert _warned(result) == {"tracepoint:skb:kfree_skb"}
    # and tcp:tcp_retransmit_skb has no family field yet: tcpretrans cannot run, and preflight says
    # so; that failure (not the headers) keeps 5.10's verdict at fail (exit 1)
    assert result["preflight"]["report"]["summary"]["failed"] == ["tracepoint:tcp:tcp_retransmit_skb"]
    assert "fields missing: family" in summary["preflight"]["values"]["tracepoint:tcp:tcp_retransmit_skb"]
    assert summary["preflight"]["exit"] == 1
    plugins = summary["plugins"]
    assert plugins["dropreason"]["preflight"] == "degraded"
    assert plugins["dropreason"]["agent"] == "running"
    assert "no reason field" in plugins["dropreason"]["agent_reason"]
    assert "UNKNOWN" in plugins["dropreason"]["agent_reason"]
    assert (plugins["tcpretrans"]["preflight"], plugins["tcpretrans"]["agent"]) == (
        "unavailable",
        "unavailable",
    )
    assert "no field family" in plugins["tcpretrans"]["agent_reason"]
    assert {n for n, p in plugins.items() if p["agent"] == "running"} == ALL_PLUGINS - {"tcpretrans"}
    assert summary["predicted_all"], plugins
    assert result["kernel"]["drop_reason_names"] == []
    assert summary["tc_attach"] == "cls_bpf"  # no TCX before 6.6


def test_510_counts_are_exact_with_drops_under_unknown(matrix) -> None:
    result, summary = matrix["5.10"]
    _exact(summary)
    phases = result["lab"]["phases"]
    assert set(phases["udp_dropped"]["drops"]) == {"UNKNOWN"}
    assert summary["drop_reasons_seen"] == ["UNKNOWN"]


@pytest.mark.parametrize("name", ["6.1", "5.10"])
def test_captured_tree_gives_preflight_the_live_verdicts(matrix, name: str) -> None:
    """The tree the guest captured, read back with --root on this host, agrees with the live run."""
    result, summary = matrix[name]
    tree = Path(result["host"]["out_dir"]) / "tree"
    done = subprocess.run(
        [str(Path(sys.executable).parent / "retina-preflight"), "--json", "--root", str(tree)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    offline = {c["id"]: c["verdict"] for c in json.loads(done.stdout)["checks"]}
    assert offline == _checks(summary)
    assert done.returncode == summary["preflight"]["exit"]


def _predicted_unavailable(result: dict) -> set[str]:
    return {p["name"] for p in result["preflight"]["report"]["plugins"] if p["status"] == "unavailable"}


def _every_configuration_verified(result: dict, summary: dict) -> dict:
    """Every configuration ran in the guest, and each loaded as predicted (or the test names the
    configuration, the plugin and the verifier's words)."""
    phase = result["verifier"]
    assert "error" not in phase, phase["error"]
    assert list(phase["configurations"]) == list(configurations())
    surprises = verifier_surprises(result, _predicted_unavailable(result))
    assert not surprises, "\n".join(surprises)
    assert summary["verifier"]["refused"] == {}
    # a run-time setting is not a constant: the same programs, loaded once
    sampled = phase["configurations"]["every plugin, pod level, dataSamplingRate 4"]
    assert sampled["same_as"] == "every plugin, pod level"
    return phase["configurations"]


def test_61_every_configuration_of_the_bpf_programs_loads(matrix) -> None:
    result, summary = matrix["6.1"]
    configs = _every_configuration_verified(result, summary)
    assert _predicted_unavailable(result) == set()
    # the default install, and each plugin alone (the agent's fallback when the combined program
    # is refused), loaded by this kernel's verifier
    assert configs["basic"]["plugins"] == {
        p: {"state": "loaded", "reason": ""} for p in ("dns", "dropreason", "packetforward", "tcpretrans")
    }
    for name, entry in configs.items():  # packetparser alone needs pod level, and says so
        node_level = set() if entry["config"].get("enablePodLevel") else {"packetparser"}
        not_loaded = {p for p, r in entry["plugins"].items() if r["state"] != "loaded"}
        assert not_loaded == node_level & set(entry["plugins"]), (name, entry["plugins"])


def test_510_every_configuration_loads_but_what_the_kernel_lacks(matrix) -> None:
    """5.10's tcp_retransmit_skb has no family field (tcpretrans says so, in every configuration
    that enables it) and kfree_skb no reason field (dropreason loads, degraded); every other plugin
    loads in every configuration."""
    result, summary = matrix["5.10"]
    configs = _every_configuration_verified(result, summary)
    assert _predicted_unavailable(result) == {"tcpretrans"}
    for name, entry in configs.items():
        plugins = entry["plugins"]
        if "tcpretrans" in plugins:
            assert plugins["tcpretrans"]["state"] == "unavailable", name
            assert "no field family" in plugins["tcpretrans"]["reason"], (name, plugins["tcpretrans"])
        if "dropreason" in plugins:
            assert plugins["dropreason"]["state"] == "loaded", (name, plugins["dropreason"])
            assert "no reason field" in plugins["dropreason"]["reason"], name
    assert {p: r["state"] for p, r in configs["basic"]["plugins"].items()} == {
        "dns": "loaded",
        "dropreason": "loaded",
        "packetforward": "loaded",
        "tcpretrans": "unavailable",
    }
