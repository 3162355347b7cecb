"""adv_drop_*: a dropped packet is attributed to the pods its addresses belong to.

The addresses are read from the packet's IP header through sk_buff offsets taken from this
kernel's BTF (headers of another kernel would give wrong offsets silently): exact labels and
exact counts prove the offsets right on the running kernel.
"""

from __future__ import annotations

from pathlib import Path

from retina_lab.traffic import LOSSY_LINK_TIMEOUT, random_loss_rule, send_udp
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
            with a.entered(), socket.create_connection((b.ip, 7111), timeout=LOSSY_LINK_TIMEOUT) as c:
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


def _drop_flows(pid: int):
    """The agent's kernel map of drop flows (a duplicate fd), found among its BPF map fds."""
    import os
    import re

    from retina_agent.bpf import syscall
    from retina_agent.bpf.maps import BpfMap
    from retina_agent.plugins.dropreason import DropFlowKey, DropValue

    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        found = re.search(r"^map_id:\s*(\d+)", info, re.MULTILINE)
        if not found:
            continue
        mfd = syscall.map_fd_by_id(int(found.group(1)))
        if syscall.map_info(mfd).name == "drop_flows":
            return BpfMap(mfd, DropFlowKey, DropValue, percpu=True)
        os.close(mfd)
    raise AssertionError("no drop_flows map among the agent's fds")


def _flows_between(flows, src: str, dst: str) -> int:
    import socket

    want = (socket.inet_aton(src), socket.inet_aton(dst))
    return sum((raw[12:16], raw[28:32]) == want for raw, _ in flows.raw_items())


def test_pod_leaving_the_selection_stops_its_drop_counts(seeded):  # noqa: F811
    """The kernel checks the IPs of interest on a drop flow's first drop only: when the pods
    leave the selection the agent deletes their flows, the next drops create none, and their
    drops are counted again, exactly, once the pods are selected again."""
    import os

    from retina_agent.podlevel.flows import IDLE_HARVESTS_BEFORE_PRUNE
    from retina_lab.agent import wait_for
    from retina_lab.cluster import apply_crds, metrics_configuration
    from tests.podlevel.test_lifecycle import client_for, mc_status, replace_mc_spec

    kube, node = seeded
    apply_crds(kube)
    kube.seed([metrics_configuration("all", exclude=[])])
    api = client_for(kube)
    a, b = node["a"], node["b"]
    port = 7112
    rule = ["INPUT", "-p", "udp", "--dport", str(port), "-j", "DROP"]
    b.run(["iptables", "-A", *rule])
    flows = None

    def dropped() -> int:
        return int(b.run(["iptables", "-L", "INPUT", "-v", "-n", "-x"]).stdout.splitlines()[2].split()[0])

    def set_spec(exclude: list[str]) -> None:
        spec = metrics_configuration("all", exclude=exclude)["spec"]
        replace_mc_spec(api, "all", spec)
        wait_for(lambda: mc_status(api, "all").get("lastKnownSpec") == spec, 10, message="new spec")

    db = {"destination_podname": "db-0", "reason": "NETFILTER_DROP"}
    node_drops = {"reason": "NETFILTER_DROP", "direction": "ingress"}
    try:
        with pod_level_agent(kube, remote=True) as agent:
            flows = _drop_flows(agent.proc.pid)
            send_udp(a, b.ip, port, 20)
            assert dropped() == 20
            m = agent.scrape_until(lambda m: m.value(ADV_DROP, **db) >= 20)
            assert m.value(ADV_DROP, **db) == 20, m.series(ADV_DROP)
            assert _flows_between(flows, a.ip, b.ip) == 1

            set_spec(["shop", "data"])  # neither pod selected any more

            def gone() -> bool:
                send_udp(a, b.ip, port, 1)  # the flow stays busy: it must go as deselected, not idle
                return _flows_between(flows, a.ip, b.ip) == 0

            wait_for(gone, (IDLE_HARVESTS_BEFORE_PRUNE - 2) * 1.0, interval=0.2, message="drop flow removed")
            before = agent.scrape()
            base, sent = dropped(), 25
            send_udp(a, b.ip, port, sent)
            assert dropped() == base + sent
            assert _flows_between(flows, a.ip, b.ip) == 0  # the filter refuses a new flow
            # once the node-wide count has these drops, the harvest that took them is done
            m = agent.scrape_until(
                lambda m: (
                    m.value("networkobservability_drop_count", **node_drops)
                    >= before.value("networkobservability_drop_count", **node_drops) + sent
                )
            )
            assert m.value("networkobservability_drop_count", **node_drops) >= (
                before.value("networkobservability_drop_count", **node_drops) + sent
            )
            assert m.value(ADV_DROP, **db) == before.value(ADV_DROP, **db), m.series(ADV_DROP)

            set_spec([])  # selected again: counted again, from the first drop (series restart)
            wait_for(lambda: not agent.scrape().has(ADV_DROP), 10, message="series restarted")
            send_udp(a, b.ip, port, 15)
            m = agent.scrape_until(lambda m: m.value(ADV_DROP, **db) >= 15)
            assert m.value(ADV_DROP, **db) == 15, m.series(ADV_DROP)
    finally:
        b.run(["iptables", "-D", *rule], check=False)
        if flows is not None:
            os.close(flows.fd)
