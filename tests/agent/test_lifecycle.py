"""Agent start-up, failure reporting and clean shutdown, with the real process."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from retina_lab.agent import AgentProcess, our_tc_filters, wait_for
from retina_lab.traffic import connect_refused


def test_missing_tracepoint_makes_one_plugin_unavailable_others_run(lab_node):
    config = {"plugins": {"tcpretrans": {"tracepoint": "tcp:no_such_tracepoint"}}}
    with AgentProcess(config) as agent:
        ready = agent.readyz()
        assert ready["ready"] is True
        tcpretrans = ready["plugins"]["tcpretrans"]
        assert tcpretrans["state"] == "unavailable"
        assert "tcp:no_such_tracepoint does not exist" in tcpretrans["reason"]
        assert all(p["state"] == "running" for name, p in ready["plugins"].items()
                   if name != "tcpretrans")
        metrics = agent.scrape()
        status = "controlplane_networkobservability_plugin_status"
        assert metrics.value(status, plugin="tcpretrans", state="unavailable") == 1
        assert metrics.value(status, plugin="dropreason", state="running") == 1
        assert not metrics.has("networkobservability_tcpretrans_count")
        assert "plugin tcpretrans unavailable" in agent.log()
        # the others work: drops are still counted
        before = metrics.value("networkobservability_drop_count", reason="NO_SOCKET")
        connect_refused(lab_node["a"], lab_node["b"].ip, 7020, 3)
        agent.wait_metric(lambda m: m.value("networkobservability_drop_count",
                                            reason="NO_SOCKET") >= before + 3)


def test_sigterm_removes_every_tc_filter_and_qdisc(lab_node):
    veth = lab_node["a"].host_veth
    agent = AgentProcess()
    try:
        agent.start()
        pid = agent.proc.pid
        wait_for(lambda: any(f.startswith(f"{veth}/") for f in our_tc_filters(pid)), 10,
                 message="filters on the pod veth")
        assert "clsact" in _qdiscs(veth)
        agent.signal(signal.SIGTERM)
        assert agent.proc.wait(30) == 0
        assert our_tc_filters(pid) == []
        assert "clsact" not in _qdiscs(veth)  # we created it, so we removed it
        assert "stopped; TC filters and programs removed" in agent.log()
    finally:
        agent.cleanup()


def test_foreign_clsact_and_filters_are_left_alone(lab_node):
    """Another owner's TC programs (a CNI such as Cilium) survive our start and stop."""
    veth = lab_node["b"].host_veth
    subprocess.run(["tc", "qdisc", "add", "dev", veth, "clsact"], check=True)
    subprocess.run(["tc", "filter", "add", "dev", veth, "ingress", "prio", "1", "matchall",
                    "action", "mirred", "egress", "mirror", "dev", veth], check=False)
    foreign_before = _filters(veth)
    with AgentProcess() as agent:
        pid = agent.proc.pid
        wait_for(lambda: any(f.startswith(f"{veth}/") for f in our_tc_filters(pid)), 10)
        agent.stop()
    assert "clsact" in _qdiscs(veth)
    assert _filters(veth) == foreign_before
    assert not any(f.startswith(f"{veth}/") for f in our_tc_filters(pid))


def test_restart_after_crash_comes_up_clean(lab_node):
    veth = lab_node["a"].host_veth
    first = AgentProcess()
    try:
        first.start()
        dead = first.proc.pid
        wait_for(lambda: any(f.startswith(f"{veth}/") for f in our_tc_filters(dead)), 10)
        first.signal(signal.SIGKILL)  # a crash: nothing cleaned up
        first.proc.wait(10)
        stale = [f for f in our_tc_filters(dead) if f.startswith(f"{veth}/")]
        assert stale, "a killed agent leaves its filters behind"
        second = AgentProcess(config={"stateDir": first.config["stateDir"]})
        with second:
            pid = second.proc.pid
            # the dead agent's filters are gone, and the new one has exactly one set
            assert [f for f in our_tc_filters(dead) if f.startswith(f"{veth}/")] == []
            fresh = [f.split("@")[0] for f in our_tc_filters(pid) if f.startswith(f"{veth}/")]
            assert sorted(fresh) == sorted(f.split("@")[0] for f in stale)
            assert "removed stale TC state" in second.log()
        assert our_tc_filters(pid) == []
        assert "clsact" not in _qdiscs(veth)
    finally:
        first.cleanup()


def _qdiscs(dev: str) -> str:
    return subprocess.run(["tc", "qdisc", "show", "dev", dev], capture_output=True,
                          text=True).stdout


def _filters(dev: str) -> str:
    return subprocess.run(["tc", "filter", "show", "dev", dev, "ingress"], capture_output=True,
                          text=True).stdout


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
