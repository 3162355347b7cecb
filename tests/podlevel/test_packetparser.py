"""Pod-level flows (adv_forward_*) with labels from Kubernetes objects, on real traffic."""

from __future__ import annotations

import subprocess

import pytest

from retina_lab.agent import AgentProcess, our_tc_filters, wait_for
from retina_lab.cluster import NODE, seed_lab
from retina_lab.traffic import send_udp, udp_sink
from tests.helpers.metrics import wait_exact
from tests.kube_fixtures import AGENT_USER, agent_kubeconfig_for, refusals_of

FWD = "networkobservability_adv_forward_count"


def pod_level_agent(kube, *, remote: bool, extra: dict | None = None) -> AgentProcess:
    """The agent with pod-level metrics, logged in as in production: the ``retina-agent``
    ServiceAccount's token, bound by the RBAC the agent role renders."""
    config = {
        "enablePodLevel": True,
        "remoteContext": remote,
        "enabledPlugin": ["packetparser", "dropreason", "dns", "tcpretrans"],
        "podLevel": {"kubeconfig": str(agent_kubeconfig_for(kube)), "nodeName": NODE},
    }
    config.update(extra or {})
    return AgentProcess(config)


@pytest.fixture
def seeded(kube_emulator, lab_node):
    """The lab's pods in the emulator; the test fails if RBAC refused the agent anything."""
    seed_lab(kube_emulator, lab_node)
    yield kube_emulator, lab_node
    assert refusals_of(kube_emulator, AGENT_USER) == [], "the agent's RBAC lacks what it uses"


def wait_veths(agent: AgentProcess, node) -> None:
    pid = agent.proc.pid

    def attached() -> bool:
        filters = our_tc_filters(pid)
        return all(any(f.startswith(f"{v}/ingress/retina_pp") for f in filters) for v in node.host_veths)

    try:
        wait_for(attached, 15, message="packetparser on pod veths")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: {our_tc_filters(pid)}\n{agent.log()[-2000:]}") from None


def test_local_context_labels_from_deployment(seeded):
    kube, node = seeded
    a, b = node["a"], node["b"]
    sink = udp_sink(b, 7100)
    with pod_level_agent(kube, remote=False) as agent:
        wait_veths(agent, node)
        send_udp(a, b.ip, 7100, 50)
        web = {
            "ip": a.ip,
            "namespace": "shop",
            "podname": "web-5d9c-x7k2p",
            "workload_kind": "Deployment",
            "workload_name": "web",
            "direction": "egress",
        }
        db = {
            "ip": b.ip,
            "namespace": "data",
            "podname": "db-0",
            "workload_kind": "StatefulSet",
            "workload_name": "db",
            "direction": "ingress",
        }
        # Exactly: a's veth sees each packet once leaving a (egress), b's veth once entering b
        # (ingress); 142 bytes a frame (100 payload + UDP 8 + IPv4 20 + Ethernet 14). ARP is not
        # IP and the pods send no other IPv4, so nothing else can land in these series.
        fwd_bytes = "networkobservability_adv_forward_bytes"
        m = wait_exact(
            agent,
            lambda m: {
                "web": m.value(FWD, **web),
                "db": m.value(FWD, **db),
                "web bytes": m.value(fwd_bytes, **web),
                "db bytes": m.value(fwd_bytes, **db),
            },
            {"web": 50, "db": 50, "web bytes": 50 * 142, "db bytes": 50 * 142},
        )
        assert all(set(s) == set(web) for s in m.series(FWD))  # prefix-less local labels
    sink.close()


def test_remote_context_labels_both_sides(seeded):
    kube, node = seeded
    a, b = node["a"], node["b"]
    sink = udp_sink(b, 7101)
    with pod_level_agent(kube, remote=True) as agent:
        wait_veths(agent, node)
        send_udp(a, b.ip, 7101, 40)
        want = {
            "source_namespace": "shop",
            "source_podname": "web-5d9c-x7k2p",
            "source_workload_kind": "Deployment",
            "source_workload_name": "web",
            "destination_namespace": "data",
            "destination_podname": "db-0",
            "destination_workload_kind": "StatefulSet",
            "destination_workload_name": "db",
        }
        # Exactly 40 each: once at a's veth (egress), once again at b's veth (ingress).
        m = wait_exact(
            agent,
            lambda m: {d: m.value(FWD, direction=d, **want) for d in ("egress", "ingress")},
            {"egress": 40, "ingress": 40},
        )
        # The pod-level text (rendered by the agent itself) is valid exposition. promtool's only
        # lint findings may be Retina's own control-plane names, which dashboards and alerts
        # need verbatim (``..._counter`` breaks promtool's "no type in the name" rule).
        check = subprocess.run(["promtool", "check", "metrics"], input=m.text, capture_output=True, text=True)
        findings = [line for line in (check.stdout + check.stderr).splitlines() if line]
        retina_names = (
            "controlplane_networkobservability_lost_events_counter",
            "controlplane_networkobservability_expired_metrics_counter",
        )
        assert check.returncode in (0, 3), findings  # 1 would be a parse error
        assert all(line.startswith(retina_names) for line in findings), findings
    sink.close()
