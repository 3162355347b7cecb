"""Link events must not change what runs on a pod's veth: a bridge's news about its ports,
a veth renamed after the agent attached to it.

The kernel sends RTM_NEWLINK/RTM_DELLINK with ``ifi_family`` AF_BRIDGE about each bridge port
(its state, cost, flags; and, with STP off, once more when the forward-delay timer fires 15 s
after the port came up). They carry no IFLA_LINKINFO, so read as a device they describe a veth
of no kind: a ``pods`` selector no longer matched, the plugin's bit was cleared on every pod of
a bridge CNI (cni0, the lab's bridge) and pod-level flows stopped 15 s after each pod started
(issue 15's diagnose lab: NO_TRAFFIC for flows that went both ways).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from retina_agent.bpf import datapath, syscall
from retina_agent.bpf.datapath import FEATURE_BITS, InterfaceBits
from retina_agent.demo.node import run
from retina_agent.links import LinkSelector
from retina_agent.tc import OWNER, TcManager
from retina_lab.agent import wait_for


def ifindex(name: str) -> int:
    return int(Path(f"/sys/class/net/{name}/ifindex").read_text())


@contextlib.contextmanager
def data_path(tmp_path, mode: str = "auto"):
    """The data path (packetforward only: a small build) and a TcManager attaching it to the
    pods' veths, as the agent does; stopped and closed at the end."""
    loaded, _ = datapath.load([datapath.Feature("packetforward", maps=["pf_counts"])])
    bits = InterfaceBits(loaded.maps["dp_ifaces"], loaded.maps["dp_ifaces_hi"])
    manager = TcManager(tmp_path, mode)
    try:
        manager.set_datapath(loaded.programs, bits)
        manager.start()
        manager.enable("packetforward", LinkSelector(["pods"]))
        yield loaded, bits, manager
    finally:
        manager.stop()
        loaded.plugins["packetforward"].close()
        loaded.close()


def ours_on(loaded, mode: str, dev: str, direction: str) -> int:
    """How many of our data path's attachments the kernel lists on one hook."""
    if mode == "tcx":
        ours = syscall.prog_info(loaded.programs[direction]).id
        return syscall.prog_query(ifindex(dev), syscall.TCX_ATTACH_TYPES[direction]).count(ours)
    shown = run(["tc", "filter", "show", "dev", dev, direction]).stdout
    return shown.count(f"retina_dp_{direction}@{OWNER}")  # other agents may attach here too


def test_bridge_port_messages_keep_the_plugin_on_the_pod_veths(lab_node, tmp_path):
    pf = FEATURE_BITS["packetforward"]
    with data_path(tmp_path) as (loaded, bits, manager):
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
            for direction in ("ingress", "egress"):  # the kernel's own list of the hook
                assert ours_on(loaded, manager.mode, v, direction) == 1, f"{v} {direction}"


@pytest.mark.parametrize("mode", ["tcx", "cls_bpf"])
def test_a_renamed_veth_keeps_one_attachment_and_none_after_stop(lab_node, tmp_path, mode):
    """A CNI may rename a host veth after creating it (down, rename, up): the agent sees a known
    index under a new name. It must not end with two of our filters (every packet counted
    twice) nor keep a TCX link it no longer knows of (still attached after the agent stops)."""
    pod = lab_node["a"]
    renamed = pod.host_veth[:-1] + "r"
    with data_path(tmp_path, mode) as (loaded, _bits, manager):
        assert manager.mode == mode
        wait_for(lambda: pod.host_veth in manager.attached(), 15, message="the veth attached")
        run(["ip", "link", "set", pod.host_veth, "down"])
        run(["ip", "link", "set", pod.host_veth, "name", renamed])
        pod.host_veth = renamed  # the lab removes it by this name
        run(["ip", "link", "set", renamed, "up"])
        # The rename's event is followed by the "up" one: once the veth is attached under its
        # new name and up, both were handled.
        wait_for(lambda: renamed in manager.attached(), 15, message="the renamed veth attached")
        barrier = lab_node.add_pod("b2").host_veth  # events are handled in order
        wait_for(lambda: barrier in manager.attached(), 15, message="a later pod's veth")
        for direction in ("ingress", "egress"):
            assert ours_on(loaded, mode, renamed, direction) == 1, direction
        manager.stop()
        for direction in ("ingress", "egress"):
            assert ours_on(loaded, mode, renamed, direction) == 0, f"{direction}: left after stop"
