"""The data path's seams: a plugin that fails to load costs only itself, map layouts are
checked against the kernel's, and a damaged TC state file never stops the agent."""

from __future__ import annotations

import contextlib
import ctypes
from pathlib import Path

import pytest

from retina_agent.bpf import datapath
from retina_agent.bpf.maps import BpfMap, MapLayoutError
from retina_agent.bpf.spec import LoadedProgram, LoadError
from retina_agent.plugins.packetforward import PfValue
from retina_lab.agent import AgentProcess


def test_a_feature_that_fails_to_load_costs_only_its_plugin():
    features = [
        datapath.Feature("packetforward", maps=["pf_counts"]),
        # latency's histogram map of 0 entries: the kernel refuses to create it
        datapath.Feature(
            "latency", maps=["apiservers", "pending", "latency_hist"], max_entries={"latency_hist": 0}
        ),
    ]
    loaded, _ = datapath.load(features)
    try:
        assert isinstance(loaded.plugins["latency"], LoadError)
        assert "latency_hist" in str(loaded.plugins["latency"])
        assert "Invalid argument" in str(loaded.plugins["latency"])
        pf = loaded.plugins["packetforward"]
        assert isinstance(pf, LoadedProgram)
        assert set(loaded.programs) == {"ingress", "egress"}  # the data path itself loaded
        counts = BpfMap(pf.maps["pf_counts"], ctypes.c_uint32, PfValue, percpu=True)
        assert counts.lookup(ctypes.c_uint32(0)) is not None
        pf.close()
    finally:
        loaded.close()


def test_map_layout_is_checked_against_the_kernel_map():
    loaded, _ = datapath.load([datapath.Feature("packetforward", maps=["pf_counts"])])
    try:
        fd = loaded.plugins["packetforward"].maps["pf_counts"]

        class Drifted(ctypes.Structure):  # a field lost on the Python side
            _fields_ = [("packets", ctypes.c_uint64)]

        with pytest.raises(
            MapLayoutError,
            match=r"pf_counts: its value is 16 bytes in the "
            r"kernel but Drifted is 8 bytes",
        ):
            BpfMap(fd, ctypes.c_uint32, Drifted, percpu=True)
        with pytest.raises(MapLayoutError, match="its key is 4 bytes"):
            BpfMap(fd, ctypes.c_uint64, PfValue, percpu=True)
        BpfMap(fd, ctypes.c_uint32, PfValue, percpu=True)  # the right types pass
    finally:
        loaded.plugins["packetforward"].close()
        loaded.close()


@pytest.mark.parametrize("content", ["null", "[]", "42", "{not json", '{"x": 1}'])
def test_damaged_tc_state_file_is_reported_and_the_agent_starts(tmp_path, content):
    """Issue 12: a tc-state.json holding null or [] crashed every start."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "tc-state.json").write_text(content)
    with AgentProcess(
        {"stateDir": str(state), "enabledPlugin": ["packetforward"], "dataPathAttach": "cls_bpf"}
    ) as agent:
        assert agent.readyz()["plugins"]["packetforward"]["state"] == "running"
        assert "ignoring" in agent.log() and "tc-state.json" in agent.log()
    assert Path(state / "tc-state.json").read_text() == "{}"  # rewritten clean at stop


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dataPathBudget": "lots"}, "dataPathBudget: 'lots' is not a percentage of one core"),
        ({"dataPathBudget": "0%"}, "dataPathBudget: must be between 0% and 100%"),
        ({"dataPathAttach": "xdp"}, "dataPathAttach"),
        ({"dataSamplingRate": 0}, "dataSamplingRate"),
        (
            {"plugins": {"packetparser": {"fastFlows": 1000}}},
            r"plugins.packetparser.fastFlows: must be a power of two \(or 0 for off\), like 512 or 1024",
        ),
    ],
)
def test_data_path_settings_errors_name_the_key(overrides, message):
    from retina_agent.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
    assert load_config(None, {"dataPathBudget": "2%"}).data_path_budget == 2.0


def test_stale_filters_are_removed_and_reported(lab_node, tmp_path):
    """Issue 12: removed stale filters were never reported (only qdiscs were listed)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    from retina_agent.tc import TcManager

    veth = lab_node["a"].host_veth
    index = int(Path(f"/sys/class/net/{veth}/ifindex").read_text())
    loaded, _ = datapath.load([datapath.Feature("packetforward", maps=["pf_counts"])])
    dead = "retina_dp_ingress@999999.1"  # no such process
    try:
        with IPRoute() as ipr:
            with contextlib.suppress(NetlinkError):  # another agent may have made it
                ipr.tc("add", "clsact", index=index)
            ipr.tc(
                "add-filter",
                "bpf",
                index=index,
                handle=":1",
                fd=loaded.programs["ingress"],
                name=dead,
                parent="ffff:fff2",
                classid=1,
                direct_action=True,
                prio=0xC777,
            )  # a priority no live agent uses (they hold 0xC000 + n)
        manager = TcManager(tmp_path)
        removed = manager.cleanup_stale()
        assert f"{veth}/ingress/{dead}" in removed
        assert manager.stale_removed == len(removed)
        with IPRoute() as ipr:
            names = [str(m.get_attr("TCA_OPTIONS")) for m in ipr.get_filters(index=index, parent="ffff:fff2")]
        assert not any(dead in n for n in names)
    finally:
        loaded.plugins["packetforward"].close()
        loaded.close()
