"""When pods leave the selection, packetparser's agent side deletes their flows from the kernel
map, and the same 5-tuple's next packets do not create it again (the kernel's filter applies to
every new flow).

A deselected pod's veth stops counting, so its flow also goes idle and would be pruned as idle
after ``IDLE_HARVESTS_BEFORE_PRUNE`` unchanged harvests; the removal is therefore awaited for
fewer harvests than that: only the explicit prune of deselected flows can meet the deadline
(without it the test once passed 2 of 3 runs with a 15 s deadline)."""

from __future__ import annotations

import os
import socket
import struct

from retina_agent.bpf.maps import BpfMap
from retina_agent.plugins.packetparser import FlowKey, FlowValue
from retina_agent.podlevel.flows import IDLE_HARVESTS_BEFORE_PRUNE
from retina_lab.agent import agent_map_fd, wait_for
from retina_lab.cluster import apply_crds, metrics_configuration
from retina_lab.traffic import udp_sink
from tests.podlevel.test_lifecycle import client_for, mc_status, replace_mc_spec
from tests.podlevel.test_packetparser import pod_level_agent, seeded, wait_veths  # noqa: F401

PORT = 7250
HARVEST_S = 1.0  # the lab agent's metricsIntervalDuration
SPORT = 40250  # one fixed 5-tuple: a long-lived "connection"


def _flows_map(pid: int) -> BpfMap:
    """The agent's kernel flow map."""
    return BpfMap(agent_map_fd(pid, "flows"), FlowKey, FlowValue, percpu=True)


def _ours(flows: BpfMap, src: str, dst: str) -> list[bytes]:
    """Raw keys of the flows from src to dst on our fixed ports (both directions of counting)."""
    want = (socket.inet_aton(src), socket.inet_aton(dst), SPORT, PORT)
    found = []
    for raw, _ in flows.raw_items():
        s, d, sport, dport = raw[12:16], raw[28:32], *struct.unpack_from("=HH", raw, 32)
        if (s, d, sport, dport) == want:
            found.append(raw)
    return found


def test_deselected_pods_flows_leave_the_kernel_map(seeded):  # noqa: F811
    kube, node = seeded
    apply_crds(kube)
    a, b = node["a"], node["b"]
    kube.seed([metrics_configuration("all", exclude=[])])
    api = client_for(kube)
    sink = udp_sink(b, PORT)
    with a.entered():
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.bind((a.ip, SPORT))
    sink.settimeout(10)
    flows = None

    def send_and_receive(n: int) -> None:
        for _ in range(n):
            sender.sendto(b"x", (b.ip, PORT))
        for _ in range(n):
            sink.recv(64)

    try:
        with pod_level_agent(kube, remote=True) as agent:
            wait_veths(agent, node)
            flows = _flows_map(agent.proc.pid)
            send_and_receive(10)
            # out of pod a (a's veth ingress) and into pod b (b's veth egress)
            wait_for(lambda: len(_ours(flows, a.ip, b.ip)) == 2, 10, message="the flow in the kernel map")
            # neither pod selected any more: the agent removes the flow from the kernel
            spec = metrics_configuration("all", exclude=["shop", "data"])["spec"]
            replace_mc_spec(api, "all", spec)
            wait_for(lambda: mc_status(api, "all").get("lastKnownSpec") == spec, 10, message="new spec")
            # the connection stays busy meanwhile: its flow must go because it was deselected,
            # not because it went idle (idle flows are pruned anyway)

            def gone() -> bool:
                send_and_receive(1)
                return not _ours(flows, a.ip, b.ip)

            deadline = (IDLE_HARVESTS_BEFORE_PRUNE - 2) * HARVEST_S  # before idle pruning could
            wait_for(gone, deadline, interval=0.2, message="the deselected flow removed (not as idle)")
            # and the same 5-tuple's next packets do not bring it back (the filter says no)
            # (all received by pod b: both hooks ran for each before the check)
            send_and_receive(10)
            assert _ours(flows, a.ip, b.ip) == []
    finally:
        sender.close()
        sink.close()
        if flows is not None:
            os.close(flows.fd)
