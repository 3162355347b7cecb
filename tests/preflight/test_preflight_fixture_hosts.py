"""`retina-preflight --root TREE` on host trees: expected verdicts and exit codes.

Two kinds of tree live in tests/preflight/hosts, each labelled by its SOURCE.md: hand-written
models of distributions we cannot boot here (centos7, elrepo-6.9, ubuntu-22.04-*), and trees
captured from Debian's kernels booted under qemu by scripts/kernel_matrix.sh (debian-*), whose
live verdicts (live.json) `--root` must reproduce."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers.preflight import HOSTS, by_id, plugins, run_cli

EBPF = ("packetforward", "dropreason", "dns", "tcpretrans", "packetparser", "latency")
CAPTURED = sorted(p.name for p in HOSTS.glob("debian-*"))


def test_every_fixture_says_where_it_came_from() -> None:
    trees = [p for p in HOSTS.iterdir() if p.is_dir()]
    assert len(CAPTURED) >= 2, "the kernel matrix's captured trees are missing"
    for tree in trees:
        source = (tree / "SOURCE.md").read_text()
        captured = tree.name.startswith("debian-")
        assert ("captured from a booted guest" in source) is captured, tree.name
        assert source.splitlines()[0].endswith("hand-written, not copied from a host") is not captured, (
            tree.name
        )


@pytest.mark.parametrize("name", CAPTURED)
def test_captured_tree_reproduces_the_guests_live_verdicts(name: str) -> None:
    """The tree a booted Debian kernel gave, read with --root: the verdicts the live run had."""
    live = json.loads((HOSTS / name / "live.json").read_text())
    code, report = run_cli("--root", str(HOSTS / name))
    assert {c["id"]: c["verdict"] for c in report["checks"]} == live["checks"]
    verdicts = {p["name"]: p["status"] for p in report["plugins"]}
    # Plugins added after the guest ran are judged too; netfilter needs no eBPF: available.
    assert set(verdicts) - set(live["plugins"]) <= {"netfilter"}
    assert verdicts.get("netfilter", "available") == "available"
    assert {n: v for n, v in verdicts.items() if n in live["plugins"]} == live["plugins"]
    assert code == live["exit"]
    # and what preflight predicted is what the agent did in that guest (when its lab finished)
    if live["agent"]:
        running = {n for n, state in live["agent"].items() if state == "running"}
        assert running == {n for n, s in live["plugins"].items() if s in ("available", "degraded")}


def test_centos7_310_kernel_fails_and_only_the_non_ebpf_plugins_run() -> None:
    code, report = run_cli("--root", str(HOSTS / "centos7"))
    checks = by_id(report)
    assert code == 1 and report["summary"]["verdict"] == "fail"
    assert checks["kernel_version"]["verdict"] == "fail"
    assert "3.10.0-1160.el7.x86_64" in checks["kernel_version"]["value"]
    assert "ELRepo" in checks["kernel_version"]["fix"]
    assert checks["btf"]["verdict"] == "warn"
    assert checks["kernel_headers"]["verdict"] == "pass" and checks["kernel_headers"]["detail"]["matching"]
    assert checks["tracepoint:skb:kfree_skb"]["verdict"] == "warn"
    assert "no reason field" in checks["tracepoint:skb:kfree_skb"]["value"]
    assert checks["tracepoint:tcp:tcp_retransmit_skb"]["verdict"] == "fail"
    assert checks["tracefs"]["verdict"] == "fail" and checks["bpffs"]["verdict"] == "fail"
    assert checks["cgroup"]["detail"]["version"] == "v1"
    assert checks["libbpf"]["verdict"] == "skip" and checks["libbpf"]["value"] == "skipped (--root)"
    assert checks["tc_clsact"]["value"] == "skipped (--root)"
    assert checks["capabilities"]["verdict"] == "pass"  # the tree states CapEff in proc/self/status
    verdicts = plugins(report)
    assert verdicts["linuxutil"]["status"] == "available"
    for name in EBPF:
        assert verdicts[name]["status"] == "unavailable"
        assert any(r.startswith("kernel_version:") for r in verdicts[name]["reasons"])
    # linuxutil reads procfs; netfilter reads the kernel's rule counters: neither needs eBPF.
    assert verdicts["netfilter"]["status"] == "available"
    assert report["summary"]["plugins_available"] == ["linuxutil", "netfilter"]


def test_elrepo_69_without_btf_warns_and_dropreason_is_degraded() -> None:
    code, report = run_cli("--root", str(HOSTS / "elrepo-6.9"))
    checks = by_id(report)
    assert code == 2 and report["summary"]["warned"] == ["btf"]
    assert checks["kernel_version"]["verdict"] == "pass"
    assert checks["btf"]["verdict"] == "warn" and "CONFIG_DEBUG_INFO_BTF=n" in checks["btf"]["value"]
    # build -> /usr/src/kernels/<rel> is an absolute link, resolved inside the tree
    assert checks["kernel_headers"]["detail"]["headers_release"] == "6.9.3-1.el7.elrepo.x86_64"
    assert checks["bpffs"]["verdict"] == "pass" and "mountable" in checks["bpffs"]["value"]
    assert checks["tracefs"]["value"] == "mounted at /sys/kernel/debug/tracing"
    assert checks["tracepoint:skb:kfree_skb"]["verdict"] == "pass"
    assert checks["memlock"]["verdict"] == "pass"  # >= 5.11: memcg accounting
    verdicts = plugins(report)
    # without BTF, drop bytes and pod attribution (sk_buff offsets) are lost: degraded
    assert verdicts["dropreason"]["status"] == "degraded"
    assert verdicts["dropreason"]["reasons"][0].startswith("btf:")
    for name in ("packetforward", "dns", "tcpretrans", "linuxutil", "packetparser", "latency"):
        assert verdicts[name]["status"] == "available", verdicts[name]
    # bpf() is judged from the kernel config in --root mode; only the TC probe needs the live host
    assert verdicts["dns"]["unverified"] == ["tc_clsact"]


@pytest.mark.parametrize("headers", ["mismatched", "missing"])
def test_elrepo_69_without_btf_runs_every_plugin_whatever_its_headers(tmp_path: Path, headers: str) -> None:
    """Headers of another release and no BTF used to fail every eBPF plugin (bcc compiled
    against them); the agent's objects are compiled into its image now: headers are not needed."""
    tree = tmp_path / "elrepo"
    shutil.copytree(HOSTS / "elrepo-6.9", tree, symlinks=True)
    release = "6.9.3-1.el7.elrepo.x86_64"
    if headers == "mismatched":
        uts = tree / f"usr/src/kernels/{release}/include/generated/utsrelease.h"
        uts.write_text('#define UTS_RELEASE "6.8.12-1.el7.elrepo.x86_64"\n')
    else:
        (tree / f"lib/modules/{release}/build").unlink()
        shutil.rmtree(tree / "usr/src/kernels")
    code, report = run_cli("--root", str(tree))
    checks = by_id(report)
    assert code == 2 and report["summary"]["warned"] == ["btf"]  # BTF only degrades dropreason
    assert checks["kernel_headers"]["verdict"] == "pass"
    assert checks["kernel_headers"]["detail"]["present"] is (headers == "mismatched")
    assert "not needed" in checks["kernel_headers"]["value"]
    assert report["summary"]["plugins_unavailable"] == []
    assert report["summary"]["plugins_degraded"] == ["dropreason"]


def test_ubuntu_2204_515_dropreason_degraded() -> None:
    code, report = run_cli("--root", str(HOSTS / "ubuntu-22.04-5.15"))
    checks = by_id(report)
    assert code == 2 and report["summary"]["warned"] == ["tracepoint:skb:kfree_skb"]
    assert checks["btf"]["verdict"] == "pass"
    assert checks["kernel_headers"]["verdict"] == "pass" and checks["kernel_headers"]["detail"]["matching"]
    assert checks["kprobes"]["verdict"] == "pass"
    assert checks["cgroup"]["detail"]["version"] == "v2"
    assert checks["capabilities"]["value"] == "skipped (--root)"  # no proc/self/status in this tree
    assert "UNKNOWN" in checks["tracepoint:skb:kfree_skb"]["fix"]
    verdicts = plugins(report)
    assert verdicts["dropreason"]["status"] == "degraded"
    assert verdicts["packetparser"]["status"] == "available"


def test_ubuntu_2204_hwe_65_all_pass_with_recorded_probes() -> None:
    code, report = run_cli("--root", str(HOSTS / "ubuntu-22.04-hwe-6.5"))
    checks = by_id(report)
    assert code == 0 and report["summary"]["counts"]["fail"] == 0 and report["summary"]["counts"]["warn"] == 0
    assert checks["bpf_syscall"]["detail"]["source"] == "recorded"
    assert checks["bpf_syscall"]["verdict"] == "pass"
    assert checks["tc_clsact"]["value"].endswith("(recorded)")
    assert checks["tracepoint:skb:kfree_skb"]["detail"]["drop_reasons"] == 8
    assert report["summary"]["plugins_available"] == [  # in the plugin catalogue's order
        "linuxutil",
        "packetforward",
        "dropreason",
        "dns",
        "tcpretrans",
        "packetparser",
        "latency",
        "netfilter",
    ]
    assert all(not p["unverified"] for p in report["plugins"])


def test_human_table_names_checks_plugins_and_fixes() -> None:
    import subprocess

    from tests.helpers.preflight import VENV_BIN

    done = subprocess.run(
        [str(VENV_BIN / "retina-preflight"), "--root", str(HOSTS / "centos7")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "kernel_version" in done.stdout and "FAIL" in done.stdout
    assert "linuxutil      available" in done.stdout
    assert "Fixes:" in done.stdout and "Result: FAIL (exit 1)" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--root", "/nonexistent/tree"), "root '/nonexistent/tree' is not a directory"),
        (("--root", str(HOSTS)), "has no proc/sys/kernel/osrelease"),
        (("--plugins", "packetforward,bogus"), "plugins: unknown plugin(s) bogus"),
        (("--control-only", "--grafana-url", "http://admin:pw@grafana:3000"), "must not carry credentials"),
    ],
)
def test_bad_input_is_a_clear_error(args: tuple[str, ...], message: str) -> None:
    import subprocess

    from tests.helpers.preflight import VENV_BIN

    done = subprocess.run(
        [str(VENV_BIN / "retina-preflight"), *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 64
    assert message in done.stderr
    assert "pw" not in done.stderr
