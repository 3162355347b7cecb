"""BPF programs compiled when the package is built, loaded with libbpf at run time.

What a user sees: a dev tree whose C changed since the last build refuses to run the old
object and says which command rebuilds it; a program the kernel refuses is reported with the
verifier's own words; a kernel without a tracepoint field the program can use runs that plugin
degraded (or not at all) while the others run; and loading needs libbpf only, no bcc, LLVM or
kernel headers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from retina_agent.bpf import build
from retina_agent.bpf.client import load_programs
from retina_agent.bpf.spec import LoadedProgram, LoadError, ProgramSpec
from retina_lab.agent import AgentProcess
from retina_lab.traffic import connect_refused

HERE = Path(__file__).parent / "bpf"
FOREIGN = ProgramSpec(
    plugin="foreign",
    obj=str(HERE / "objects" / "foreign.bpf.o"),
    constants={"port": 5353},
    programs=["foreign_tcx", "foreign_cls"],
    maps=["seen_tcx"],
)


def _spec(obj: Path) -> ProgramSpec:
    return ProgramSpec(plugin="copy", obj=str(obj), constants={"port": 53}, programs=["foreign_tcx"])


def test_a_stale_object_is_refused_with_the_command_that_rebuilds_it(tmp_path):
    shutil.copy(HERE / "foreign.c", tmp_path / "foreign.c")
    obj = tmp_path / "objects" / "foreign.bpf.o"
    missing = load_programs([_spec(obj)])["copy"]
    assert isinstance(missing, LoadError)
    assert f"BPF object {obj} does not exist: run python -m retina_agent.bpf.build" in str(missing)

    assert build.build(tmp_path) == [obj]
    assert build.build(tmp_path) == []  # fresh: nothing to do
    loaded = load_programs([_spec(obj)])["copy"]
    assert isinstance(loaded, LoadedProgram), loaded
    loaded.close()

    source = tmp_path / "foreign.c"
    source.write_text(source.read_text().replace("TC_ACT_UNSPEC;\n}", "TC_ACT_UNSPEC; /* edited */\n}", 1))
    stale = load_programs([_spec(obj)])["copy"]
    assert isinstance(stale, LoadError)
    assert str(stale) == (
        f"BPF object {obj} is older than its source foreign.c: run python -m retina_agent.bpf.build"
    )
    check = subprocess.run(
        [sys.executable, "-m", "retina_agent.bpf.build", "--check", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 1 and f"stale: {obj}" in check.stdout
    rebuilt = subprocess.run(
        [sys.executable, "-m", "retina_agent.bpf.build", str(tmp_path)], capture_output=True, text=True
    )
    assert rebuilt.returncode == 0 and f"built {obj}" in rebuilt.stdout
    loaded = load_programs([_spec(obj)])["copy"]
    assert isinstance(loaded, LoadedProgram), loaded
    loaded.close()


def test_the_agents_folder_named_by_a_relative_path_is_the_same_build():
    """``python -m retina_agent.bpf.build agent/retina_agent/bpf`` once lost datapath.c's -D flags
    (the folder was compared unresolved): its fresh objects looked stale and failed to build."""
    relative = Path(os.path.relpath(build.PACKAGE_DIR))
    assert build.build(relative) == []


def test_an_object_is_the_same_from_any_checkout(tmp_path):
    """No absolute path in the objects (BTF line info): an image layer or a wheel built from two
    checkouts holds the same bytes."""
    for checkout in ("one", "two"):
        (tmp_path / checkout).mkdir()
        shutil.copy(HERE / "foreign.c", tmp_path / checkout / "foreign.c")
        build.build(tmp_path / checkout)
    one, two = ((tmp_path / c / "objects" / "foreign.bpf.o").read_bytes() for c in ("one", "two"))
    assert one == two
    assert str(tmp_path).encode() not in one and str(build.PACKAGE_DIR).encode() not in one


def test_new_compiler_flags_make_every_object_stale(tmp_path, monkeypatch):
    """The record once covered the C and the -D flags only: a change of clang's flags left the old
    objects "fresh" (this checkout ran yesterday's build while a fresh clone did not)."""
    shutil.copy(HERE / "foreign.c", tmp_path / "foreign.c")
    build.build(tmp_path)
    (source,) = build.sources(tmp_path)
    assert build.is_fresh(source)
    monkeypatch.setattr(build, "CFLAGS", [*build.CFLAGS, "-DNEW_FLAG"])
    assert not build.is_fresh(source)
    assert build.build(tmp_path) == [source.object]


def test_a_source_that_does_not_compile_names_the_file_and_line(tmp_path):
    (tmp_path / "broken.c").write_text(
        '#include "common.h"\nSEC("tc") int f(struct __sk_buff *s) { return x; }\n'
    )
    with pytest.raises(
        build.BuildError, match=r"broken.c does not compile:\n.*broken.c:2:.*undeclared identifier 'x'"
    ):
        build.build(tmp_path)
    assert not (tmp_path / "objects" / "broken.bpf.o").exists()


def test_a_refused_program_reports_the_verifiers_reason():
    bad = ProgramSpec(plugin="bad", obj=str(HERE / "objects" / "refused.bpf.o"), programs=["unbounded"])
    results = load_programs([bad, FOREIGN])
    error = results["bad"]
    assert isinstance(error, LoadError)
    message = str(error)
    assert message.startswith("loading refused.bpf.o failed: Permission denied")
    assert "prog 'unbounded': failed to load" in message
    # the verifier's words: the C line, the call it stopped at, the register it could not bound
    verifier = message.split(" | verifier: ", 1)[1].split(" | ")
    assert verifier[0] == "bpf_skb_load_bytes(skb, 0, buf, skb->len); @ refused.c:9"
    assert "call bpf_skb_load_bytes" in verifier[1] and verifier[2].startswith("R4 ")
    # the other spec of the same loader run is unaffected
    assert isinstance(results["foreign"], LoadedProgram)
    results["foreign"].close()


def test_the_reason_survives_a_long_verifier_log():
    """libbpf prints the verifier's whole log in one message; a fixed-size buffer kept its start and
    lost the end, where the verifier says why."""
    bad = ProgramSpec(
        plugin="late", obj=str(HERE / "objects" / "refused_late.bpf.o"), programs=["unbounded_late"]
    )
    message = str(load_programs([bad])["late"])
    verifier = message.split(" | verifier: ", 1)[1].split(" | ")
    assert verifier[0] == "bpf_skb_load_bytes(skb, 0, buf, skb->len); @ refused_late.c:18"
    assert verifier[-1].startswith("R4 ")


def test_an_unknown_constant_or_map_is_named():
    results = load_programs(
        [
            ProgramSpec(plugin="constant", obj=FOREIGN.obj, constants={"prot": 53}),
            ProgramSpec(plugin="map", obj=FOREIGN.obj, max_entries={"seen_tcp": 4}),
        ]
    )
    assert str(results["constant"]) == "foreign.bpf.o has no constant prot (known: port)"
    assert str(results["map"]) == "foreign.bpf.o has no map seen_tcp"


def test_a_tracepoint_without_reason_degrades_dropreason_and_one_without_family_stops_tcpretrans(lab_node):
    """skb:consume_skb has skbaddr but no reason (as skb:kfree_skb before 5.17); skb:kfree_skb
    has no family: dropreason runs degraded, counting under UNKNOWN, tcpretrans cannot run, and
    the others run."""
    config = {
        "plugins": {
            "dropreason": {"tracepoint": "skb:consume_skb"},
            "tcpretrans": {"tracepoint": "skb:kfree_skb"},
        }
    }
    with AgentProcess(config) as agent:
        plugins = agent.readyz()["plugins"]
        assert plugins["dropreason"]["state"] == "running"
        assert "skb:consume_skb has no reason field (kernel before 5.17)" in plugins["dropreason"]["reason"]
        assert plugins["tcpretrans"]["state"] == "unavailable"
        assert plugins["tcpretrans"]["reason"] == "tracepoint skb:kfree_skb has no field family"
        assert plugins["packetforward"]["state"] == "running"
        connect_refused(lab_node["a"], lab_node["b"].ip, 7021, 3)  # consumed skbs, forwarded packets
        metrics = agent.wait_metric(
            lambda m: (
                m.value("networkobservability_drop_count", reason="UNKNOWN", direction="ingress") > 0
                and m.value("networkobservability_forward_count", direction="ingress") > 0
            )
        )
        assert metrics.series("networkobservability_drop_count")  # only UNKNOWN: no reason to read
        assert {s["reason"] for s in metrics.series("networkobservability_drop_count")} == {"UNKNOWN"}


def test_dropreason_asks_btf_for_reason_names_only_when_the_tracepoint_has_a_reason(tmp_path):
    """On 5.10 (no reason field) the agent asked BTF for the skb_drop_reason enum it could not
    use, and logged its absence as "drop_bytes stays 0" (bytes were fine)."""
    from retina_agent.config import load_config
    from retina_agent.plugins.base import PluginContext
    from retina_agent.plugins.dropreason import DropReason

    def spec(tracepoint: str) -> ProgramSpec:
        config = load_config(None, {"plugins": {"dropreason": {"tracepoint": tracepoint}}})
        return DropReason(PluginContext(config=config, tc=None, state_dir=tmp_path)).prepare()

    assert spec("skb:consume_skb").btf_enums == []
    assert spec("skb:kfree_skb").btf_enums == []  # this kernel prints the names in tracefs


EM_BPF = 247
LOADS_ONLY_LIBBPF = r"""
import json, sys
from retina_agent.bpf import loader
from retina_agent.plugins.tracepoints import tracepoint_constants
from retina_agent.bpf.datapath import FEATURE_CONSTANTS
specs = [
    {"plugin": "datapath", "obj": "datapath", "constants": {c: 1 for c in FEATURE_CONSTANTS.values()},
     "programs": ["dp_ingress", "dp_egress"], "maps": ["flows"]},
    {"plugin": "dropreason", "obj": "dropreason", "maps": ["drop_counts"],
     "constants": tracepoint_constants("skb:kfree_skb", "skbaddr", "reason")[0] | {"have_reason": 1},
     "tracepoints": [["skb:kfree_skb", "on_kfree_skb"]],
     "btf_offsets": [["skb_len_off", "sk_buff", "len"]]},
    {"plugin": "tcpretrans", "obj": "tcpretrans", "maps": ["retrans_counts"],
     "constants": tracepoint_constants("tcp:tcp_retransmit_skb", "family")[0],
     "tracepoints": [["tcp:tcp_retransmit_skb", "on_tcp_retransmit_skb"]]},
]
fds = []
results = {s["plugin"]: loader._load_one(s, fds) for s in specs}
maps = open("/proc/self/maps").read()
libs = sorted({line.split()[-1] for line in maps.splitlines() if ".so" in line})
print(json.dumps({"results": results, "libs": libs, "modules": sorted(sys.modules)}))
"""


def test_objects_are_plain_bpf_elf_and_load_with_libbpf_alone():
    """No bcc anywhere: each agent object is a BPF ELF file with BTF; the loader opens them with
    libbpf.so.1 and maps no LLVM, clang or bcc library (it never compiles anything)."""
    for src in build.sources():
        data = src.object.read_bytes()
        assert data[:4] == b"\x7fELF" and struct.unpack_from("<H", data, 18)[0] == EM_BPF, src.object
        assert b".BTF" in data and b"license" in data
        assert json.loads(src.record.read_text())["sha256"] == src.digest()
    out = subprocess.run(
        [sys.executable, "-c", LOADS_ONLY_LIBBPF], capture_output=True, text=True, check=True
    )
    report = json.loads(out.stdout)
    for plugin, result in report["results"].items():
        assert "error" not in result, (plugin, result)
    libs = " ".join(report["libs"])
    assert "libbpf.so.1" in libs
    for absent in ("libbcc", "libLLVM", "libclang"):
        assert absent not in libs
    assert "bcc" not in report["modules"]


def test_nothing_the_agent_runs_imports_bcc():
    root = Path(__file__).resolve().parents[2]
    imports_bcc = re.compile(r"^\s*(?:import|from)\s+bcc\b", re.MULTILINE)
    users = [
        str(p.relative_to(root))
        for folder in ("agent", "bench", "lab", "tests/datapath", "tests/agent", "tests/podlevel")
        for p in (root / folder).rglob("*.py")
        if imports_bcc.search(p.read_text())
    ]
    assert users == []
