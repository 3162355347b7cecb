"""The kernel matrix's parts that need no guest: kernel names, module load order, the report's
expectations and predictions, and the agent's compile timeout the matrix relies on."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from retina_agent.config import AgentConfig, ConfigError, load_config
from retina_kernels import debian, matrix
from retina_kernels.catalog import KERNELS, Kernel, parse_kernels
from retina_kernels.cli import HAND_WRITTEN, write_docs
from retina_kernels.initramfs import load_order
from retina_kernels.kernel import KernelTree
from retina_kernels.report import compare_phases, predictions, tc_attach


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


def _result(reasons: list[str], drops: dict, forward: int = 100, netfilter: int = 40) -> dict:
    both = {"ingress": forward, "egress": forward}
    none = {"drops": 0}
    return {
        "kernel": {"drop_reason_names": reasons},
        "lab": {
            "phases": {
                "udp_delivered": {"sent": 100, "forward": both, "drops": {}, "netfilter": none},
                "udp_dropped": {
                    "sent": 40,
                    "iptables_dropped": 40,
                    "forward": {"ingress": 40, "egress": 40},
                    "drops": drops,
                    "netfilter": {"drops": netfilter},
                },
                "closed_port": {
                    "connects": 3,
                    "forward": {"ingress": 6, "egress": 6},
                    "drops": {"NO_SOCKET" if reasons else "UNKNOWN": 3},
                    "netfilter": none,
                },
                "dns": {
                    "queries": 10,
                    "noerror": 5,
                    "nxdomain": 5,
                    "forward": {"ingress": 20, "egress": 20},
                    "dns": {"request": 10, "response": 10},
                    "dns_rcodes": {"NOERROR": 5, "NXDOMAIN": 5},
                    "netfilter": none,
                },
            },
            "plugins": {
                "dropreason": {"state": "running", "reason": "no reason field", "attach": ""},
                "packetparser": {"state": "unavailable", "reason": "no BTF", "attach": ""},
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
    # the netfilter plugin's rule counter is exact on every kernel: iptables' own count
    missed = compare_phases(_result([], {"UNKNOWN": 44}, netfilter=39))
    assert missed["udp_dropped"]["netfilter"] == {
        "expected": {"drops": 40},
        "counted": {"drops": 39},
        "at_least": [],
        "ok": False,
    }
    assert missed["udp_delivered"]["netfilter"]["ok"]


def test_attach_mode_is_what_the_agent_says_and_the_kernel_shows() -> None:
    lab = {
        "plugins": {
            "packetforward": {"state": "running", "attach": "cls_bpf"},
            "dns": {"state": "running", "attach": "cls_bpf"},
            "dropreason": {"state": "running", "attach": ""},
        },
        "tc_mode": ["cls_bpf"],
    }
    assert tc_attach(lab) == "cls_bpf"
    lab["tc_mode"] = ["tcx"]
    assert tc_attach(lab) == "agent says cls_bpf, kernel shows tcx"
    lab["tc_mode"] = []
    assert tc_attach(lab) == "agent says cls_bpf, kernel shows none"


def test_degraded_predicts_running_and_available_predicts_running() -> None:
    found = predictions(_result([], {}))
    assert found["dropreason"]["correct"] is True
    assert found["packetparser"]["correct"] is False  # preflight said available, the agent could not run it


def test_load_timeout_is_a_bounded_duration_under_its_old_name_too() -> None:
    assert AgentConfig.model_validate({}).bpf_load_timeout == 180
    assert AgentConfig.model_validate({"bpfLoadTimeout": "20m"}).bpf_load_timeout == 1200
    # configs written before the objects were compiled ahead keep working
    assert AgentConfig.model_validate({"bpfCompileTimeout": "5m"}).bpf_load_timeout == 300
    for key in ("bpfLoadTimeout", "bpfCompileTimeout"):
        for bad in ("1s", "2h", "soon"):
            with pytest.raises(ValueError, match=key):
                AgentConfig.model_validate({key: bad})


def test_load_timeout_under_both_names_is_refused_naming_the_one_to_keep(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("bpfLoadTimeout: 5m\nbpfCompileTimeout: 3m\n")
    with pytest.raises(ConfigError, match="set only bpfLoadTimeout"):
        load_config(config)


def test_stalled_guest_cpus_are_named_from_system_map(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / "System.map-9.9.9").write_text(
        "ffffffff81000000 T _stext\n"
        "ffffffff81001000 t csd_lock_wait\n"
        "ffffffff81002000 D some_data\n"
        "ffffffff81003000 T default_idle\n"
    )
    tree = KernelTree(Kernel("x", "trixie", "amd64"), "linux-image-9.9.9", "9.9.9-1", "9.9.9", tmp_path)
    registers = "CPU#0\nRAX=0 RIP=ffffffff81001010 RFL=00000246\nCPU#1\nRIP=ffffffff81003002 RFL=2\n"
    assert tree.symbolize(registers) == [
        "CPU 0: ffffffff81001010 csd_lock_wait+0x10",
        "CPU 1: ffffffff81003002 default_idle+0x2",
    ]


@pytest.fixture
def unreachable_mirror(monkeypatch: pytest.MonkeyPatch) -> str:
    """Debian's mirror replaced by a closed port on loopback (nothing listens on port 9)."""
    mirror = "http://127.0.0.1:9/debian"
    monkeypatch.setattr(debian, "MIRROR", mirror)
    monkeypatch.setattr(matrix, "MIRROR", mirror)
    return mirror


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("apt-get") is None, reason="apt as root")
def test_lists_are_kept_when_the_mirror_is_out_of_reach(tmp_path: Path, unreachable_mirror: str) -> None:
    suite = debian.Suite("bookworm", tmp_path)
    with pytest.raises(debian.FetchError, match="apt-get update"):
        suite.update(log=lambda line: None)  # nothing fetched yet: an error
    suite.root.joinpath(".updated").touch()
    os.utime(suite.root / ".updated", (0, 0))  # a week old: refreshed, but cannot be
    said: list[str] = []
    suite.update(log=said.append)
    assert said[-1].startswith("apt: bookworm lists not refreshed, using those of ")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("qemu-system-x86_64") is None, reason="root, qemu")
def test_matrix_skips_only_without_mirror_and_cache(tmp_path: Path, unreachable_mirror: str) -> None:
    kernels = [KERNELS["6.1"], KERNELS["5.10"]]
    why = matrix.cannot_run(tmp_path, kernels)
    assert why is not None and why.startswith(f"Debian's mirror {unreachable_mirror} cannot be reached")
    assert why.endswith(f"{tmp_path} does not hold the kernel packages and root file system of 6.1, 5.10 yet")
    # the same machine with everything cached runs offline
    for suite in ("bookworm", "bullseye"):
        (tmp_path / "apt" / suite / "archives").mkdir(parents=True)
        (tmp_path / "apt" / suite / ".updated").touch()
    (tmp_path / "rootfs" / "system-x").mkdir(parents=True)
    (tmp_path / "rootfs" / "system-x" / ".complete").touch()
    (tmp_path / "apt/bookworm/archives/linux-image-6.1.0-50-cloud-amd64_6.1.1-1_amd64.deb").touch()
    (tmp_path / "apt/bullseye/archives/linux-image-5.10.0-32-amd64_5.10.1-1_amd64.deb").touch()
    assert "6.1, 5.10" in matrix.cannot_run(tmp_path, kernels)  # a -cloud package is not 6.1's
    (tmp_path / "apt/bookworm/archives/linux-image-6.1.0-50-amd64_6.1.1-1_amd64.deb").touch()
    assert matrix.cannot_run(tmp_path, kernels) is None


def test_regenerated_docs_keep_their_hand_written_part(tmp_path: Path) -> None:
    docs = tmp_path / "kernels.md"
    write_docs(docs, "# table v1\n")
    assert docs.read_text() == "# table v1\n"
    docs.write_text(docs.read_text() + f"\n{HAND_WRITTEN}\n\n## 6.12\nhangs after ...\n")
    write_docs(docs, "# table v2\n")
    assert docs.read_text() == f"# table v2\n\n{HAND_WRITTEN}\n\n## 6.12\nhangs after ...\n"


def test_phases_settle_on_the_labs_counts_not_the_guests_background_drops() -> None:
    """6.12 names the guest's background drops (its own scrapes, API retries): they never stop,
    so a settle that watched them waited out every phase's deadline (5 min each)."""
    from retina_agent.demo.agent_process import Metrics
    from retina_kernels.guest import _counted

    def scrape(queue_purge: int, netfilter: int) -> Metrics:
        return Metrics(
            'networkobservability_forward_count{direction="ingress"} 100\n'
            'networkobservability_forward_count{direction="egress"} 100\n'
            f'networkobservability_drop_count{{reason="QUEUE_PURGE",direction="unknown"}} {queue_purge}\n'
            f'networkobservability_drop_count{{reason="NETFILTER_DROP",direction="unknown"}} {netfilter}\n'
        )

    assert _counted(scrape(488, 40)) == _counted(scrape(490, 40))
    assert _counted(scrape(488, 40)) != _counted(scrape(488, 41))


def test_guests_install_the_agent_images_packages_and_no_compiler_or_headers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guest is what the agent image is (one package list, images/build.py) plus the lab's
    tools; a kernel disk keeps no build/source link to headers from an earlier matrix."""
    from images.build import AGENT_PACKAGES
    from retina_kernels import rootfs

    guest = rootfs.packages()
    assert guest[: len(AGENT_PACKAGES)] == AGENT_PACKAGES
    assert set(guest) - set(AGENT_PACKAGES) == set(rootfs.LAB_PACKAGES)
    assert not [p for p in guest if "bpfcc" in p or "headers" in p or p.startswith(("clang", "llvm", "gcc"))]

    root = tmp_path / "pkg"
    modules = root / "lib/modules/6.1.0-50-amd64"
    modules.mkdir(parents=True)
    (modules / "build").symlink_to("/usr/src/linux-headers-6.1.0-50-amd64")  # an old matrix's link
    tree = KernelTree(KERNELS["6.1"], "linux-image-6.1.0-50-amd64", "6.1.176-1", "6.1.0-50-amd64", root)
    made: list[Path] = []
    monkeypatch.setattr(matrix, "make_ext4", lambda source, image, **kw: made.append(image) or image)
    image = matrix.kernel_disk(tree, tmp_path / "cache")
    assert made == [image] and image.name == "linux-image-6.1.0-50-amd64.ext4"
    assert not (modules / "build").is_symlink()
