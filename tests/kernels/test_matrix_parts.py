"""The kernel matrix's parts that need no guest: kernel names, module load order, the report's
expectations and predictions, and the agent's compile timeout the matrix relies on."""

from __future__ import annotations

from pathlib import Path

import pytest

from retina_agent.config import AgentConfig
from retina_kernels.catalog import Kernel, parse_kernels
from retina_kernels.initramfs import load_order
from retina_kernels.kernel import KernelTree
from retina_kernels.report import compare_phases, predictions


def test_unknown_kernel_is_a_clear_error() -> None:
    assert [k.name for k in parse_kernels("6.1, 5.10")] == ["6.1", "5.10"]
    with pytest.raises(ValueError, match=r"unknown kernel\(s\) 4.19; known: 5.10, 6.1, 6.1-cloud, 6.12"):
        parse_kernels("6.1,4.19")


def test_boot_modules_load_dependencies_first_and_skip_built_ins(tmp_path: Path) -> None:
    modules = tmp_path / "lib/modules/9.9.9"
    modules.mkdir(parents=True)
    (modules / "modules.dep").write_text(
        "kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz "
        "kernel/fs/jbd2/jbd2.ko.xz\n"
        "kernel/fs/jbd2/jbd2.ko.xz:\nkernel/lib/crc16.ko.xz:\nkernel/fs/mbcache.ko.xz:\n"
        "kernel/drivers/block/virtio_blk.ko.xz:\n"
    )  # virtio_pci built in: not listed
    tree = KernelTree(Kernel("x", "trixie", "amd64"), "linux-image-9.9.9", "9.9.9-1", "9.9.9", tmp_path)
    order = load_order(tree)
    assert order[0] == "kernel/drivers/block/virtio_blk.ko.xz"
    assert order[-1] == "kernel/fs/ext4/ext4.ko.xz"
    assert set(order[1:-1]) == {
        "kernel/lib/crc16.ko.xz",
        "kernel/fs/mbcache.ko.xz",
        "kernel/fs/jbd2/jbd2.ko.xz",
    }


def _result(reasons: list[str], drops: dict, forward: int = 100) -> dict:
    both = {"ingress": forward, "egress": forward}
    return {
        "kernel": {"drop_reason_names": reasons},
        "lab": {
            "phases": {
                "udp_delivered": {"sent": 100, "forward": both, "drops": {}},
                "udp_dropped": {
                    "sent": 40,
                    "iptables_dropped": 40,
                    "forward": {"ingress": 40, "egress": 40},
                    "drops": drops,
                },
                "closed_port": {
                    "connects": 3,
                    "forward": {"ingress": 6, "egress": 6},
                    "drops": {"NO_SOCKET" if reasons else "UNKNOWN": 3},
                },
                "dns": {
                    "queries": 10,
                    "noerror": 5,
                    "nxdomain": 5,
                    "forward": {"ingress": 20, "egress": 20},
                    "dns": {"request": 10, "response": 10},
                    "dns_rcodes": {"NOERROR": 5, "NXDOMAIN": 5},
                },
            },
            "plugins": {
                "dropreason": {"state": "running", "reason": "no reason field"},
                "packetparser": {"state": "unavailable", "reason": "no BTF"},
            },
        },
        "preflight": {
            "report": {
                "plugins": [
                    {"name": "dropreason", "status": "degraded", "reasons": []},
                    {"name": "packetparser", "status": "available", "reasons": []},
                ]
            }
        },
    }


def test_expected_counts_follow_the_kernels_drop_reasons() -> None:
    with_reasons = compare_phases(_result(["NETFILTER_DROP", "NO_SOCKET"], {"NETFILTER_DROP": 40}))
    assert all(row["ok"] for rows in with_reasons.values() for row in rows.values())
    # before 5.17 the same drops are under UNKNOWN, with every other skb freed meanwhile: at least
    without = compare_phases(_result([], {"UNKNOWN": 44}))
    assert without["udp_dropped"]["drops"] == {
        "expected": {"UNKNOWN": 40},
        "counted": {"UNKNOWN": 44},
        "at_least": ["UNKNOWN"],
        "ok": True,
    }
    short = compare_phases(_result([], {"UNKNOWN": 39}, forward=101))
    assert not short["udp_dropped"]["drops"]["ok"] and not short["udp_delivered"]["forward"]["ok"]
    # with reasons, a count is exact: double counting shows
    double = compare_phases(_result(["NETFILTER_DROP", "NO_SOCKET"], {"NETFILTER_DROP": 80}))
    assert not double["udp_dropped"]["drops"]["ok"]


def test_degraded_predicts_running_and_available_predicts_running() -> None:
    found = predictions(_result([], {}))
    assert found["dropreason"]["correct"] is True
    assert found["packetparser"]["correct"] is False  # preflight said available, the agent could not run it


def test_compile_timeout_is_a_bounded_duration() -> None:
    assert AgentConfig.model_validate({}).bpf_compile_timeout == 180
    assert AgentConfig.model_validate({"bpfCompileTimeout": "20m"}).bpf_compile_timeout == 1200
    for bad in ("1s", "2h", "soon"):
        with pytest.raises(ValueError, match="bpfCompileTimeout"):
            AgentConfig.model_validate({"bpfCompileTimeout": bad})
