"""A bridge's link messages about its ports must not change what runs on a pod's veth.

The kernel sends RTM_NEWLINK/RTM_DELLINK with ``ifi_family`` AF_BRIDGE about each bridge port
(its state, cost, flags; and, with STP off, once more when the forward-delay timer fires 15 s
after the port came up). They carry no IFLA_LINKINFO, so read as a device they describe a veth
of no kind: a ``pods`` selector no longer matched, the plugin's bit was cleared on every pod of
a bridge CNI (cni0, the lab's bridge) and pod-level flows stopped 15 s after each pod started
(issue 15's diagnose lab: NO_TRAFFIC for flows that went both ways).
"""

from __future__ import annotations

from pathlib import Path

from retina_agent.bpf import datapath, syscall
from retina_agent.bpf.datapath import FEATURE_BITS, InterfaceBits
from retina_agent.demo.node import run
from retina_agent.links import LinkSelector
from retina_agent.plugins.base import bpf_source
from retina_agent.tc import TcManager
from retina_lab.agent import wait_for


def ifindex(name: str) -> int:
    return int(Path(f"/sys/class/net/{name}/ifindex").read_text())


def test_bridge_port_messages_keep_the_plugin_on_the_pod_veths(lab_node, tmp_path):
    loaded, _ = datapath.load(
        [datapath.Feature("packetforward", maps=["pf_counts"])], bpf_source("datapath.c")
    )
    bits = InterfaceBits(loaded.maps["dp_ifaces"], loaded.maps["dp_ifaces_hi"])
    manager = TcManager(tmp_path)
    pf = FEATURE_BITS["packetforward"]
    try:
        manager.set_datapath(loaded.programs, bits)
        manager.start()
        manager.enable("packetforward", LinkSelector(["pods"]))
        veths = lab_node.host_veths
        assert all(bits.get(ifindex(v)) == pf for v in veths)

        # AF_BRIDGE RTM_NEWLINK for each port, now (the timer's message is the same kind).
        for v in veths:
            run(["bridge", "link", "set", "dev", v, "cost", "7"])
        # Link events are handled in order by one thread: once a pod added after them is
        # attached, the bridge's messages about a and b have been handled too.
        late = lab_node.add_pod("c").host_veth
        wait_for(lambda: manager.attached().get(late) == ["packetforward"], 15, message="pod c's veth")

        for v in veths:
            assert bits.get(ifindex(v)) == pf, f"{v} lost its plugin bit"
            assert manager.attached().get(v) == ["packetforward"], manager.attached()
            if manager.mode == "tcx":  # the kernel's own list of the hook's programs
                for direction, attach_type in syscall.TCX_ATTACH_TYPES.items():
                    ours = syscall.prog_info(loaded.programs[direction]).id
                    assert ours in syscall.prog_query(ifindex(v), attach_type), f"{v} {direction}: detached"
    finally:
        manager.stop()
        loaded.plugins["packetforward"].close()
        loaded.close()
