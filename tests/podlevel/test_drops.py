"""adv_drop_*: a dropped packet is attributed to the pods its addresses belong to.

The addresses are read from the packet's IP header through sk_buff offsets taken from this
kernel's BTF (headers of another kernel would give wrong offsets silently): exact labels and
exact counts prove the offsets right on the running kernel.
"""

from __future__ import annotations

from retina_lab.traffic import random_loss_rule, send_udp
from tests.podlevel.test_packetparser import pod_level_agent, seeded  # noqa: F401

ADV_DROP = "networkobservability_adv_drop_count"


def test_iptables_drop_in_pod_b_carries_pod_b_labels(seeded):  # noqa: F811
    kube, node = seeded
    a, b = node["a"], node["b"]
    rule = ["INPUT", "-p", "udp", "--dport", "7110", "-j", "DROP"]
    b.run(["iptables", "-A", *rule])
    try:
        with pod_level_agent(kube, remote=False) as agent:
            send_udp(a, b.ip, 7110, 30)
            dropped = int(
                b.run(["iptables", "-L", "INPUT", "-v", "-n", "-x"]).stdout.splitlines()[2].split()[0]
            )
            assert dropped == 30
            db = {
                "reason": "NETFILTER_DROP",
                "ip": b.ip,
                "namespace": "data",
                "podname": "db-0",
                "workload_kind": "StatefulSet",
                "workload_name": "db",
                "direction": "ingress",
            }
            web = {
                "reason": "NETFILTER_DROP",
                "ip": a.ip,
                "namespace": "shop",
                "podname": "web-5d9c-x7k2p",
                "workload_kind": "Deployment",
                "workload_name": "web",
                "direction": "egress",
            }
            m = agent.scrape_until(lambda m: m.value(ADV_DROP, **db) >= dropped)
            assert m.value(ADV_DROP, **db) == dropped, m.series(ADV_DROP)
            assert m.value(ADV_DROP, **web) == dropped  # the sender is a pod of this node too
            assert m.value("networkobservability_adv_drop_bytes", **db) == dropped * 128
    finally:
        b.run(["iptables", "-D", *rule], check=False)


def test_retransmissions_attributed_to_the_sending_pod(seeded):  # noqa: F811
    import socket

    from retina_lab.agent import wait_for
    from retina_lab.traffic import TcpServer

    kube, node = seeded
    a, b = node["a"], node["b"]
    server = TcpServer(b, 7111)
    rule = random_loss_rule(7111)
    b.run(["iptables", "-A", *rule])
    try:
        with pod_level_agent(kube, remote=False) as agent:
            with a.entered(), socket.create_connection((b.ip, 7111), timeout=10) as c:
                for _ in range(100):
                    c.sendall(b"r" * 1000)
                wait_for(lambda: server.received >= 100_000, 60, message="lossy transfer")
            web = {"ip": a.ip, "podname": "web-5d9c-x7k2p", "workload_name": "web", "direction": "egress"}
            name = "networkobservability_adv_tcpretrans_count"
            m = agent.scrape_until(lambda m: m.value(name, **web) > 0)
            assert m.value(name, **web) > 0, m.series(name)
            assert m.value(name, podname="db-0", direction="ingress") == m.value(name, **web)
    finally:
        b.run(["iptables", "-D", *rule], check=False)
        server.close()
