"""Agent start-up, failure reporting and clean shutdown, with the real process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from retina_lab.agent import AgentProcess, _tcx_links, our_tc_filters, wait_for
from retina_lab.traffic import connect_refused


def test_missing_tracepoint_makes_one_plugin_unavailable_others_run(lab_node):
    config = {"plugins": {"tcpretrans": {"tracepoint": "tcp:no_such_tracepoint"}}}
    with AgentProcess(config) as agent:
        ready = agent.readyz()
        assert ready["ready"] is True
        tcpretrans = ready["plugins"]["tcpretrans"]
        assert tcpretrans["state"] == "unavailable"
        assert "tcp:no_such_tracepoint does not exist" in tcpretrans["reason"]
        assert all(p["state"] == "running" for name, p in ready["plugins"].items() if name != "tcpretrans")
        metrics = agent.scrape()
        status = "controlplane_networkobservability_plugin_status"
        assert metrics.value(status, plugin="tcpretrans", state="unavailable") == 1
        assert metrics.value(status, plugin="dropreason", state="running") == 1
        assert not metrics.has("networkobservability_tcpretrans_count")
        assert "plugin tcpretrans unavailable" in agent.log()
        # the others work: drops are still counted
        before = metrics.value("networkobservability_drop_count", reason="NO_SOCKET")
        connect_refused(lab_node["a"], lab_node["b"].ip, 7020, 3)
        agent.wait_metric(
            lambda m: m.value("networkobservability_drop_count", reason="NO_SOCKET") >= before + 3
        )


@pytest.mark.parametrize("attach", ["tcx", "cls_bpf"])
def test_sigterm_removes_every_tc_filter_and_qdisc(lab_node, attach):
    veth = lab_node["a"].host_veth
    agent = AgentProcess({"dataPathAttach": attach})
    try:
        agent.start()
        pid = agent.proc.pid
        wait_for(
            lambda: any(f.startswith(f"{veth}/") for f in our_tc_filters(pid)),
            10,
            message="filters on the pod veth",
        )
        state = Path(agent.config["stateDir"]) / "tc-state.json"
        created = veth in json.loads(state.read_text()).values()
        if attach == "tcx":
            assert not created  # TCX needs no qdisc
        else:
            assert "clsact" in _qdiscs(veth)
        agent.signal(signal.SIGTERM)
        assert agent.proc.wait(30) == 0
        assert our_tc_filters(pid) == []
        assert json.loads(state.read_text()) == {}
        if created:  # we created it, so we removed it (unless another agent now uses it)
            wait_for(
                lambda: "clsact" not in _qdiscs(veth) or _any_filters(veth), 30, message="our clsact removed"
            )
        assert "stopped; TC filters and programs removed" in agent.log()
    finally:
        agent.cleanup()


def test_tcx_links_die_with_a_killed_agent(lab_node):
    """TCX (the default on 6.6+): the links are the agent's fds, so SIGKILL leaves nothing."""
    veth = lab_node["a"].host_veth
    index = int(Path(f"/sys/class/net/{veth}/ifindex").read_text())
    agent = AgentProcess()
    try:
        agent.start()
        pid = agent.proc.pid
        assert agent.readyz()["plugins"]["packetforward"]["attach"] == "tcx"
        wait_for(
            lambda: any(f.startswith(f"{veth}/ingress/retina_pf") for f in our_tc_filters(pid)),
            10,
            message="the data path on the pod veth",
        )
        # ours only: other agents on a shared machine attach to every veth too
        ours = {prog for i, _, prog in _tcx_links(pid) if i == index}
        assert ours and ours <= set(_tcx_programs(index)), "no TCX program of ours on the veth"
        agent.signal(signal.SIGKILL)
        agent.proc.wait(10)
        wait_for(
            lambda: not (ours & set(_tcx_programs(index))), 10, message="the killed agent's TCX programs gone"
        )
        assert our_tc_filters(pid) == []
    finally:
        agent.cleanup()


def _tcx_programs(index: int) -> list[int]:
    from retina_agent.bpf import syscall

    return syscall.prog_query(index, syscall.BPF_TCX_INGRESS) + syscall.prog_query(
        index, syscall.BPF_TCX_EGRESS
    )


def test_restart_after_crash_comes_up_clean(lab_node):
    """cls_bpf (kernels before 6.6): filters outlive a crash; the next agent removes them."""
    veth = lab_node["a"].host_veth
    first = AgentProcess({"dataPathAttach": "cls_bpf"})
    try:
        first.start()
        dead = first.proc.pid
        wait_for(lambda: any(f.startswith(f"{veth}/") for f in our_tc_filters(dead)), 10)
        first.signal(signal.SIGKILL)  # a crash: nothing cleaned up
        first.proc.wait(10)
        stale = [f for f in our_tc_filters(dead) if f.startswith(f"{veth}/")]
        assert stale, "a killed agent leaves its filters behind"
        second = AgentProcess(config={"stateDir": first.config["stateDir"], "dataPathAttach": "cls_bpf"})
        with second:
            pid = second.proc.pid
            # the dead agent's filters are gone, and the new one has exactly one set
            assert [f for f in our_tc_filters(dead) if f.startswith(f"{veth}/")] == []
            fresh = [f.split("@")[0] for f in our_tc_filters(pid) if f.startswith(f"{veth}/")]
            assert sorted(fresh) == sorted(f.split("@")[0] for f in stale)
            # every removal is logged and counted, filters as well as qdiscs (other agents on
            # a shared host may have removed some of the dead one's filters first)
            logged = [
                line.split(": ", 1)[1].split(", ")
                for line in second.log().splitlines()
                if "removed stale TC state" in line
            ]
            removed = second.scrape().value("controlplane_networkobservability_stale_tc_removed_total")
            assert removed == (len(logged[0]) if logged else 0)
        assert our_tc_filters(pid) == []
        # gone, unless another agent on a shared machine holds it (made it, filters follow)
        wait_for(
            lambda: "clsact" not in _qdiscs(veth) or _any_filters(veth), 30, message="our clsact removed"
        )
    finally:
        first.cleanup()


def _qdiscs(dev: str) -> str:
    return subprocess.run(["tc", "qdisc", "show", "dev", dev], capture_output=True, text=True).stdout


def _any_filters(dev: str) -> bool:
    return any(
        subprocess.run(["tc", "filter", "show", "dev", dev, d], capture_output=True, text=True).stdout.strip()
        for d in ("ingress", "egress")
    )


def _agent_cli(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(Path(sys.executable).parent / "retina-agent"), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_unknown_key_and_bad_values_are_named(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text("apiServer:\n  port: 10093\nmetricsInterval: 5s\nenabledPlugin: [dns, flows]\n")
    result = _agent_cli("--config", str(bad))
    assert result.returncode == 2
    assert "metricsInterval: unknown key" in result.stderr
    assert "enabledPlugin: unknown plugin flows" in result.stderr
    result = _agent_cli("--metrics-interval=-3s")
    assert result.returncode == 2
    assert "metricsIntervalDuration" in result.stderr and "negative" in result.stderr
    result = _agent_cli("--port", "70000")
    assert result.returncode == 2 and "apiServer.port" in result.stderr
    missing = _agent_cli("--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
