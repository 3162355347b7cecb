"""Pod-level flows keep being counted after the pods' bridge sends news about its ports.

A bridge CNI's node (cni0; the lab's bridge) gets link messages of family AF_BRIDGE about each
port: at a cost or state change, and 15 s after a port came up (the forward-delay timer, STP
off). The agent took them for the veth itself, without its kind, and turned packetparser off
on every pod's veth: flows stopped 15 s after each pod started (issue 15). The fast check of
the mechanism is ``tests/datapath/test_link_events.py``; this one is what a user sees.
"""

from __future__ import annotations

from retina_agent.demo.node import run
from retina_lab.agent import our_tc_filters, wait_for
from retina_lab.traffic import send_udp, udp_sink
from tests.helpers.metrics import wait_exact
from tests.podlevel.test_packetparser import pod_level_agent, seeded, wait_veths  # noqa: F401

FWD = "networkobservability_adv_forward_count"


def test_flows_are_counted_after_the_bridge_announces_its_ports(seeded):  # noqa: F811
    kube, node = seeded
    a, b = node["a"], node["b"]
    sink = udp_sink(b, 7140)
    try:
        with pod_level_agent(kube, remote=False) as agent:
            wait_veths(agent, node)
            for veth in node.host_veths:  # an AF_BRIDGE RTM_NEWLINK about each port
                run(["bridge", "link", "set", "dev", veth, "cost", "7"])
            # The agent handles link events in order: once a pod added after them runs
            # packetparser, the bridge's messages about a and b were handled.
            late = f"{node.add_pod('c').host_veth}/ingress/retina_pp"
            wait_for(
                lambda: any(f.startswith(late) for f in our_tc_filters(agent.proc.pid)),
                15,
                message="packetparser on the late pod's veth",
            )
            send_udp(a, b.ip, 7140, 30)
            # Exactly 30 each: leaving a (egress of web), entering b (ingress of db).
            wait_exact(
                agent,
                lambda m: {
                    "web": m.value(FWD, podname="web-5d9c-x7k2p", direction="egress"),
                    "db": m.value(FWD, podname="db-0", direction="ingress"),
                },
                {"web": 30, "db": 30},
            )
    finally:
        sink.close()
