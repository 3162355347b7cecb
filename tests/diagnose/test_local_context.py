"""diagnose with ``remoteContext: false`` and without the netfilter plugin: a verdict from each
pod's own series, saying that it stands in for the pair's, and asking for the plugin."""

from __future__ import annotations

import contextlib
import json

from retina_capture.cli.main import main
from retina_lab.agent import AgentProcess, wait_for
from retina_lab.cluster import NODE, seed_lab
from retina_lab.prometheus import PrometheusServer
from retina_lab.traffic import send_udp
from tests.diagnose.lab import scrape_health
from tests.podlevel.test_packetparser import wait_veths

POD_LEVEL = "networkobservability_adv_"


def test_local_context_policy_drop_without_the_netfilter_plugin(kube_emulator, lab_node, capsys):
    seed_lab(kube_emulator, lab_node)  # a: shop/web-5d9c-x7k2p, b: data/db-0
    a, b = lab_node["a"], lab_node["b"]
    rule = ["INPUT", "-p", "udp", "--dport", "7120", "-j", "DROP"]
    b.run(["iptables", "-A", *rule])
    try:
        with (
            AgentProcess(
                {
                    "enablePodLevel": True,
                    "remoteContext": False,
                    "enabledPlugin": ["packetparser", "dropreason"],
                    "podLevel": {"kubeconfig": str(kube_emulator.kubeconfig_path), "nodeName": NODE},
                }
            ) as agent,
            PrometheusServer([f"127.0.0.1:{agent.port}"]) as prom,
        ):
            wait_veths(agent, lab_node)
            wait_for(lambda: prom.query("up == 1"), 60, message="the first scrape")
            send_udp(a, b.ip, 7120, 25)
            last: dict = {}

            def verdict():
                nonlocal last
                code = main(
                    [
                        "diagnose",
                        "shop/web-5d9c-x7k2p",
                        "data/db-0",
                        "--kubeconfig",
                        str(kube_emulator.kubeconfig_path),
                        "--prometheus",
                        prom.url,
                        "-o",
                        "json",
                    ]
                )
                assert code == 0
                last = json.loads(capsys.readouterr().out)
                return last["counts"].get("drops_a_to_b", {}).get("NETFILTER_DROP", 0) >= 25

            with contextlib.suppress(TimeoutError):  # the assertions show the last verdict
                wait_for(verdict, 40, 1.0, "the drops in Prometheus")
            # What the agent itself exposes, for a failure's message: agent or Prometheus?
            exposed = [line for line in agent.scrape_text().splitlines() if line.startswith(POD_LEVEL)]
            scrapes = scrape_health(prom)
    finally:
        b.run(["iptables", "-D", *rule], check=False)
    assert last["context"] == "local", json.dumps(
        {"diagnose": last, "agent": exposed, "scrapes": scrapes}, indent=1
    )
    assert last["verdict"] == "POLICY_DROP", last["findings"]
    assert last["counts"]["drops_a_to_b"]["NETFILTER_DROP"] == 25
    assert "enable the agent's netfilter plugin to name the rule and policy" in last["summary"]
    assert any(
        e.startswith("local context: counts are A's and B's with every peer") for e in last["evidence"]
    )
