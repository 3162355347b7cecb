"""Our data path next to another owner's TC programs (retina#1958: packetparser silently
failing next to Cilium's TCX programs). A foreign TCX program and a foreign cls_bpf filter
on the same veth see every packet before, during and after our agent, exactly."""

from __future__ import annotations

import pytest

from retina_lab.agent import AgentProcess, our_tc_filters, wait_for
from retina_lab.traffic import send_udp, udp_sink
from tests.datapath.foreign import ForeignPrograms

PORT = 7210


@pytest.mark.parametrize("attach", ["tcx", "cls_bpf"])
def test_foreign_tcx_and_cls_bpf_see_every_packet_before_during_after(lab_node, attach):
    a, b = lab_node["a"], lab_node["b"]
    veth = a.host_veth  # what pod a sends enters the node at this veth's TC ingress
    foreign = ForeignPrograms(veth, PORT)
    sink = udp_sink(b, PORT)
    sent = 0

    def send(n: int) -> None:
        nonlocal sent
        send_udp(a, b.ip, PORT, n, 64)
        sent += n
        wait_for(
            lambda: foreign.counts() == (sent, sent),
            10,
            interval=0.1,
            message=f"both foreign programs at {sent}: {foreign.counts()}",
        )
        assert foreign.counts() == (sent, sent)

    try:
        foreign.attach()
        send(20)  # before our agent
        only_here = {"interfaces": [veth]}
        with AgentProcess(
            {"dataPathAttach": attach, "plugins": {"packetforward": only_here, "dns": only_here}}
        ) as agent:
            pid = agent.proc.pid
            assert agent.readyz()["plugins"]["packetforward"]["attach"] == attach
            wait_for(
                lambda: f"{veth}/ingress/retina_pf_ingress" in [f.split("@")[0] for f in our_tc_filters(pid)],
                10,
                message="our data path on the veth",
            )
            before = agent.scrape().value("networkobservability_forward_count", direction="ingress")
            send(30)  # during: ours runs as well, and counts them too
            agent.wait_metric(
                lambda m: m.value("networkobservability_forward_count", direction="ingress") - before >= 30,
                message="our packetforward counting the same packets",
            )
            assert foreign.still_attached() == (True, True)
        assert not any(f.startswith(f"{veth}/") for f in our_tc_filters(pid))
        assert foreign.still_attached() == (True, True)  # our stop left theirs alone
        send(25)  # after
    finally:
        sink.close()
        foreign.close()
