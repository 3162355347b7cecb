"""The netfilter plugin in the real agent: a selected namespace's drops on /metrics."""

from __future__ import annotations

import pytest

from retina_agent.config import ConfigError, load_config
from retina_lab.agent import AgentProcess
from retina_lab.traffic import send_udp
from tests.netfilter import rulesets
from tests.netfilter.test_rulesets import UDP_LEN, node  # noqa: F401

COUNT = "networkobservability_netfilter_drop_count"


def test_agent_serves_named_drops_of_a_selected_namespace(node):  # noqa: F811
    node.restore("iptables-nft-restore", rulesets.calico(node, "data", "allow-api-only"))
    config = {
        "enabledPlugin": ["netfilter"],
        "plugins": {"netfilter": {"namespaces": [node.netns, "/run/netns/absent-i15"]}},
    }
    with AgentProcess(config) as agent:
        m = agent.scrape()
        assert not m.has(COUNT) or m.value(COUNT) == 0  # only rules that dropped something
        send_udp(node["a"], node["b"].ip, 7310, 33)
        want = {
            "netns": node.netns,
            "table": "ip filter",
            "chain": f"cali-tw-{node['b'].host_veth}",
            "owner": "calico",
            "policy": "allow-api-only",
            "policy_namespace": "data",
        }
        m = agent.scrape_until(lambda m: m.value(COUNT, **want) >= 33, timeout=20)
        assert m.value(COUNT, **want) == 33, m.series(COUNT)
        assert m.value("networkobservability_netfilter_drop_bytes", **want) == 33 * UDP_LEN
        assert len(m.series(COUNT)) == 1
        assert m.value("networkobservability_netfilter_rules", netns=node.netns, backend="iptables-nft") > 50
        status = m.series("controlplane_networkobservability_plugin_status")
        assert {"plugin": "netfilter", "state": "running", "reason": "", "attach": ""} in status
        # The missing namespace is reported once, although every harvest since start (the drops
        # above needed at least one) met it again.
        reported = [line for line in agent.log().splitlines() if "absent-i15" in line]
        assert len(reported) == 1 and "netfilter:" in reported[0], reported


def test_bad_option_names_the_key():
    with pytest.raises(ConfigError, match="plugins.netfilter.namespaces"):
        load_config(overrides={"plugins.netfilter.namespaces": []})
