"""retina-preflight on this machine, for real. What the kernel offers (kprobes, BTF, headers, the
drop reason field) is read from the machine itself here, independently of preflight's code, so the
test holds on any machine CI lands on."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.preflight import by_id, plugins, run_cli

LIBDIR = Path("/usr/lib")
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
        "headers_dir": build.is_dir(),  # a VM without a modules tree has none at all
        "headers": headers,
        "headers_match": headers == release,
        # libbpf.so.1 -> libbpf.so.1.1.2: the version of Debian's libbpf1 (scripts/setup.sh)
        "libbpf": [
            ".".join(so.resolve().name.split(".")[2:4]) for so in Path("/usr/lib").glob("*/libbpf.so.1")
        ],
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
    assert checks["bpf_syscall"]["value"] == "works (created an array map, loaded a socket filter)"
    assert checks["libbpf"]["verdict"] == "pass"
    assert [checks["libbpf"]["detail"]["version"]] == facts["libbpf"]
    # headers: reported, never a warning: the agent's objects are compiled into its image
    headers = checks["kernel_headers"]["detail"]
    assert headers["present"] is facts["headers_dir"]
    if facts["headers_dir"]:
        assert headers["headers_release"] == facts["headers"]
        assert headers["matching"] is facts["headers_match"]
    assert checks["kernel_headers"]["verdict"] == "pass" and "not needed" in checks["kernel_headers"]["value"]
    warned = {
        cid
        for cid, ok in (
            ("kprobes", facts["kprobes"]),
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


def test_without_libbpf_on_the_host_the_check_skips_and_blocks_nothing(monkeypatch) -> None:
    """A node running the agent image needs no libbpf of its own: preflight on such a node says
    so (skip, not a failure) and every eBPF plugin stays available."""
    from retina_preflight.core import live_probes, plugins
    from retina_preflight.core.context import NodeContext
    from retina_preflight.core.host import HostView

    monkeypatch.setattr(live_probes, "LIBBPF", "libbpf-not-installed.so.1")
    result = live_probes.check_libbpf(NodeContext(HostView("/")))
    assert result.verdict == "skip" and "the agent image ships it" in result.value
    assert result.detail == {"found": False}
    verdict = plugins.plugin_verdict("dropreason", {"libbpf": result})
    assert verdict["status"] == "available" and verdict["unverified"] == []


def test_bpf_syscall_without_cap_bpf_fails_and_names_the_capability() -> None:
    """The probe really calls bpf(): without CAP_BPF/CAP_SYS_ADMIN the kernel refuses it."""
    code = """
import json
from retina_preflight.core import live_probes
from retina_preflight.core.context import NodeContext
from retina_preflight.core.host import HostView
r = live_probes.check_bpf_syscall(NodeContext(HostView("/")))
print(json.dumps([r.verdict, r.value, r.fix]))
"""
    done = subprocess.run(
        ["setpriv", "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr
    verdict, value, fix = json.loads(done.stdout)
    assert verdict == "fail" and value == "bpf(BPF_MAP_CREATE) failed: EPERM", value
    assert "CAP_BPF" in fix
