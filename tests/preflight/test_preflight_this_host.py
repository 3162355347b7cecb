"""retina-preflight on this machine, for real: kernel 6.18 with tracepoints and TC, no kprobes."""

from __future__ import annotations

import os
import subprocess

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


def test_this_machine_report(tracefs_mounted: None) -> None:
    before = _our_netns()
    code, report = run_cli()
    checks = by_id(report)
    assert report["host"]["mode"] == "live"
    assert report["host"]["kernel_release"] == os.uname().release
    # kprobes: CONFIG_KPROBES is off on this kernel
    assert checks["kprobes"]["verdict"] == "warn" and "unavailable" in checks["kprobes"]["value"]
    # TC clsact: tried for real in a throw-away netns, which is gone again
    assert checks["tc_clsact"]["verdict"] == "pass", checks["tc_clsact"]
    assert _our_netns() == before
    # tracepoints and their fields
    assert checks["tracepoint:skb:kfree_skb"]["verdict"] == "pass"
    assert "reason" in checks["tracepoint:skb:kfree_skb"]["detail"]["fields"]
    assert checks["tracepoint:tcp:tcp_retransmit_skb"]["verdict"] == "pass"
    assert checks["btf"]["verdict"] == "pass"
    assert checks["bpf_syscall"]["verdict"] == "pass"
    assert checks["bcc"]["verdict"] == "pass"
    # Debian 6.1 headers serve the 6.18 kernel: usable because BTF exists, hence a warning
    assert checks["kernel_headers"]["verdict"] == "warn"
    assert checks["kernel_headers"]["detail"]["matching"] is False
    assert all(p["status"] == "available" for p in plugins(report).values())
    assert code == 2 and set(report["summary"]["warned"]) == {"kprobes", "kernel_headers"}


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
