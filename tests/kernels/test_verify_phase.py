"""The kernel matrix's verifier phase (``retina_agent.verify``), run on this host's kernel.

The guests run the same function; here it shows that every configuration loads on this kernel
as the agent would load it, and that a configuration the verifier refuses is caught: reported
with its name, the plugin and the verifier's words, in the report, in docs/kernels.md's table
and by the check the matrix tests use (``verifier_surprises``), while the configuration's other
plugins still load.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from retina_agent import verify
from retina_agent.bpf.datapath import Feature
from retina_agent.bpf.spec import ProgramSpec
from retina_agent.plugins.dns import Dns
from retina_agent.plugins.latency import Latency
from retina_kernels.report import _verifier_rows, verifier, verifier_surprises

REFUSED_OBJECT = Path(__file__).parent.parent / "datapath" / "bpf" / "objects" / "refused.bpf.o"


def test_every_configuration_loads_on_this_kernel() -> None:
    report = verify.verify(timeout=120)
    assert list(report) == list(verify.configurations())
    result = {"verifier": {"seconds": 1.0, "configurations": report}}
    assert verifier_surprises(result, unavailable=set()) == []
    basic = report["basic"]["plugins"]
    assert basic == {
        p: {"state": "loaded", "reason": ""} for p in ("dns", "dropreason", "packetforward", "tcpretrans")
    }
    # pod level loads more code in every plugin that has a pod-level part: a different load
    assert report["basic, pod level"]["same_as"] is None
    assert report["dns alone, pod level"]["same_as"] is None
    # packetforward and latency have none, and dataSamplingRate is a run-time setting
    assert report["packetforward alone, pod level"]["same_as"] == "packetforward alone"
    assert report["latency alone, pod level"]["same_as"] == "latency alone"
    assert report["every plugin, pod level, dataSamplingRate 4"]["same_as"] == "every plugin, pod level"
    # packetparser at node level: the plugin's own refusal, naming the fix, not the verifier's
    pp = report["packetparser alone"]["plugins"]["packetparser"]
    assert pp["state"] == "unavailable" and "enablePodLevel: true" in pp["reason"]


class RefusedDns(Dns):
    """dns whose program is one every verifier refuses (tests/datapath/bpf/refused.c)."""

    def prepare(self) -> ProgramSpec:
        return ProgramSpec(plugin=self.name, obj=str(REFUSED_OBJECT), programs=["unbounded"])


def test_a_refused_configuration_is_named_with_the_verifiers_words(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(verify.REGISTRY, "dns", RefusedDns)
    configs = verify.configurations()
    report = verify.verify({n: configs[n] for n in ("basic", "packetforward alone")}, timeout=120)
    dns = report["basic"]["plugins"]["dns"]
    assert dns["state"] == "refused"
    assert "refused.bpf.o failed: Permission denied" in dns["reason"]
    assert "bpf_skb_load_bytes(skb, 0, buf, skb->len); @ refused.c:9" in dns["reason"]
    # the configuration's other plugins still load (each spec is loaded on its own)
    assert {p: r["state"] for p, r in report["basic"]["plugins"].items() if p != "dns"} == {
        "dropreason": "loaded",
        "packetforward": "loaded",
        "tcpretrans": "loaded",
    }
    assert report["packetforward alone"]["plugins"] == {"packetforward": {"state": "loaded", "reason": ""}}

    result = {"verifier": {"seconds": 1.0, "configurations": report}}
    surprises = verifier_surprises(result, unavailable=set())
    assert len(surprises) == 1
    assert surprises[0].startswith("basic: dns refused: ")
    assert "refused.c:9" in surprises[0]
    summary = verifier(result)
    assert list(summary["refused"]) == ["basic"]
    assert "refused.c:9" in summary["refused"]["basic"]["dns"]
    row = next(line for line in _verifier_rows(summary) if line.startswith("| basic |"))
    assert "dns: loading refused.bpf.o failed" in row and row.endswith(" ✗ |")
    # four cells: the verifier's own " | " separators are escaped
    assert len(re.split(r"(?<!\\)\|", row)) == 6, row


def test_a_failed_phase_and_an_unpredicted_plugin_state_are_surprises() -> None:
    entry = {
        "config": {"enabledPlugin": ["tcpretrans", "dropreason"]},
        "same_as": None,
        "plugins": {
            "tcpretrans": {
                "state": "unavailable",
                "reason": "tracepoint tcp:tcp_retransmit_skb: no field family",
            },
            "dropreason": {"state": "loaded", "reason": ""},
        },
    }
    result = {"verifier": {"seconds": 1.0, "configurations": {"basic": entry}}}
    assert verifier_surprises(result, unavailable={"tcpretrans"}) == []
    assert verifier_surprises(result, unavailable=set()) == [
        "basic: tcpretrans unavailable, not predicted: tracepoint tcp:tcp_retransmit_skb: no field family"
    ]
    assert verifier_surprises(result, unavailable={"tcpretrans", "dropreason"}) == [
        "basic: dropreason loaded, predicted unavailable"
    ]
    assert verifier_surprises({"verifier": {"error": "Traceback ...\nImportError: x"}}, set()) == [
        "the verifier phase failed: Traceback ...\nImportError: x"
    ]
    assert verifier_surprises({}, set()) == ["no verifier phase in this run"]


class UnloadableLatency(Latency):
    """latency whose part of the TC data path sets a constant the object does not have."""

    def prepare(self) -> Feature:
        feature = super().prepare()
        feature.constants["no_such_constant"] = 1
        return feature


def test_a_refused_tc_plugin_is_found_by_the_agents_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """The combined data path object fails; as the agent does, each TC plugin is then loaded
    alone: only the one at fault is refused, the other TC plugins of the configuration load."""
    monkeypatch.setitem(verify.REGISTRY, "latency", UnloadableLatency)
    configs = verify.configurations()
    report = verify.verify({n: configs[n] for n in ("every plugin", "latency alone")}, timeout=120)
    for name in ("every plugin", "latency alone"):
        latency = report[name]["plugins"]["latency"]
        assert latency["state"] == "refused" and "no_such_constant" in latency["reason"], (name, latency)
    states = {p: r["state"] for p, r in report["every plugin"]["plugins"].items()}
    assert states == {
        "dns": "loaded",
        "dropreason": "loaded",
        "latency": "refused",
        "packetforward": "loaded",
        "packetparser": "unavailable",
        "tcpretrans": "loaded",
    }
    surprises = verifier_surprises({"verifier": {"configurations": report}}, unavailable=set())
    assert [s.split(":", 2)[:2] for s in surprises] == [
        ["every plugin", " latency refused"],
        ["latency alone", " latency refused"],
    ]
