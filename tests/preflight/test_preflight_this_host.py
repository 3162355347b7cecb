"""retina-preflight on this machine, for real. What the kernel offers (kprobes, BTF, headers, the
drop reason field) is read from the machine itself here, independently of preflight's code, so the
test holds on any machine CI lands on."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers.preflight import by_id, plugins, run_cli

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the bpf() and TC probes need root")


def _mounted(path: str) -> bool:
    return subprocess.run(["mountpoint", "-q", path], check=False).returncode == 0


@pytest.fixture(scope="module")
def tracefs_mounted() -> None:
    """The agent mounts tracefs itself; for this test make sure it is mounted (setup.sh does too)."""
    if not _mounted("/sys/kernel/tracing"):
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=True)


def _our_netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith("retina-preflight-")]


def _host_facts() -> dict:
    """What this kernel offers, read straight from the host (not through preflight's code)."""
    release = os.uname().release
    tracing = "/sys/kernel/tracing"
    kfree_fmt = Path(tracing, "events/skb/kfree_skb/format").read_text()
    build = Path(f"/lib/modules/{release}/build")
    uts = build / "include/generated/utsrelease.h"
    headers = re.search(r'UTS_RELEASE\s+"([^"]+)"', uts.read_text()).group(1) if uts.is_file() else None
    return {
        "kprobes": Path(tracing, "kprobe_events").exists(),
        "btf": Path("/sys/kernel/btf/vmlinux").is_file(),
        "reason_field": re.search(r"field:[^;]*\breason;", kfree_fmt) is not None,
        "headers": headers,
        "headers_match": headers == release,
    }


def test_this_machine_report(tracefs_mounted: None) -> None:
    facts = _host_facts()
    before = _our_netns()
    code, report = run_cli()
    checks = by_id(report)
    assert report["host"]["mode"] == "live"
    assert report["host"]["kernel_release"] == os.uname().release
    # kprobes: a warning exactly when tracefs has no kprobe_events (CONFIG_KPROBES off)
    assert checks["kprobes"]["verdict"] == ("pass" if facts["kprobes"] else "warn")
    assert ("unavailable" in checks["kprobes"]["value"]) is not facts["kprobes"]
    # TC clsact: tried for real in a throw-away netns, which is gone again
    assert checks["tc_clsact"]["verdict"] == "pass", checks["tc_clsact"]
    assert _our_netns() == before
    # tracepoints and their fields, as tracefs lists them
    assert checks["tracepoint:skb:kfree_skb"]["verdict"] == ("pass" if facts["reason_field"] else "warn")
    assert ("reason" in checks["tracepoint:skb:kfree_skb"]["detail"]["fields"]) is facts["reason_field"]
    assert checks["tracepoint:tcp:tcp_retransmit_skb"]["verdict"] == "pass"
    assert checks["btf"]["verdict"] == ("pass" if facts["btf"] else "warn")
    assert checks["bpf_syscall"]["verdict"] == "pass"
    assert checks["bcc"]["verdict"] == "pass"
    # headers: matching passes; another release's headers are usable with BTF (warn)
    assert checks["kernel_headers"]["detail"]["headers_release"] == facts["headers"]
    assert checks["kernel_headers"]["detail"]["matching"] is facts["headers_match"]
    assert checks["kernel_headers"]["verdict"] == ("pass" if facts["headers_match"] else "warn")
    warned = {
        cid
        for cid, ok in (
            ("kprobes", facts["kprobes"]),
            ("kernel_headers", facts["headers_match"]),
            ("tracepoint:skb:kfree_skb", facts["reason_field"]),
            ("btf", facts["btf"]),
        )
        if not ok
    }
    assert set(report["summary"]["warned"]) == warned
    assert code == (2 if warned else 0)
    statuses = {name: p["status"] for name, p in plugins(report).items()}
    assert statuses.pop("dropreason") == (
        "available" if facts["reason_field"] and facts["btf"] else "degraded"
    )
    if facts["btf"]:  # without BTF packetparser cannot run (tests/preflight/hosts cover that)
        assert set(statuses.values()) == {"available"}, statuses


def test_this_machine_as_control_host_without_helm(k8s_api: str, tmp_path) -> None:
    from tests.helpers.preflight import create_crd, write_kubeconfig

    for name in ("podmonitors.monitoring.coreos.com", "servicemonitors.monitoring.coreos.com"):
        create_crd(k8s_api, name)
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", k8s_api)
    env = dict(os.environ, PATH="/usr/bin:/bin")  # no helm anywhere here
    code, report = run_cli("--control-only", "--kubeconfig", str(kubeconfig), env=env)
    checks = by_id(report)
    assert report["plugins"] == []
    assert checks["helm"]["verdict"] == "fail" and "helm.sh" in checks["helm"]["fix"]
    assert checks["cluster"]["verdict"] == "pass", checks["cluster"]["value"]
    assert checks["cluster"]["detail"]["version"] == "v1.30.2"
    assert checks["kube_prometheus_stack"]["verdict"] == "warn"
    assert checks["kube_prometheus_stack"]["detail"]["missing"] == ["prometheuses.monitoring.coreos.com"]
    assert checks["grafana"]["verdict"] == "skip"
    assert code == 1


def test_bcc_import_past_its_deadline_is_a_warning_not_a_failure(monkeypatch, tmp_path) -> None:
    """On a slow node (Debian's kernels under qemu took over 20s) importing bcc can outlast the
    probe: that says nothing about bcc, so the eBPF plugins must not be marked unavailable."""
    from retina_preflight.core import live_probes
    from retina_preflight.core.context import NodeContext
    from retina_preflight.core.host import HostView

    slow = tmp_path / "python"
    slow.write_text("#!/bin/sh\nsleep 5\n")
    slow.chmod(0o755)
    monkeypatch.setattr(live_probes.sys, "executable", str(slow))
    monkeypatch.setattr(live_probes, "BCC_IMPORT_TIMEOUT", 0.5)
    result = live_probes.check_bcc(NodeContext(HostView("/")))
    assert result.verdict == "warn" and "did not finish in 0.5s" in result.value
    assert "bpfCompileTimeout" in result.fix
