"""Drops counted per rule from the kernel's own counters and named by the project that wrote
the rule, on real rulesets in a namespace that plays the node's host namespace, real drops."""

from __future__ import annotations

import socket
import subprocess

import pytest

from retina_agent.netfilter import drops, reader
from retina_agent.netfilter.drops import DropKey
from retina_lab.traffic import send_udp, udp_sink
from tests.helpers.tools import require
from tests.netfilter import rulesets
from tests.netfilter.routed import RoutedNode

UDP_LEN = 100 + 8 + 20  # payload, UDP and IPv4 headers: what the rule counters count


@pytest.fixture
def node():
    for tool in ("ipset", "iptables-legacy-restore", "iptables-nft-restore", "nft"):
        require(tool)
    with RoutedNode() as n:
        yield n


def read(node: RoutedNode) -> dict[DropKey, list[int]]:
    ruleset = reader.read_netns(node.path)
    assert not [p for p in ruleset.problems if "nftables" in p], ruleset.problems
    return drops.drop_counters(ruleset.tables, node.netns)


def nonzero(counters: dict[DropKey, list[int]]) -> dict[DropKey, list[int]]:
    return {k: v for k, v in counters.items() if v[0]}


@pytest.mark.parametrize("backend", ["iptables-legacy", "iptables-nft"])
def test_calico_policy_drop_names_the_network_policy(node, backend):
    node.restore(f"{backend}-restore", rulesets.calico(node, "data", "allow-api-only"))
    sink = udp_sink(node["b"], 7300)
    try:
        send_udp(node["a"], node["b"].ip, 7300, 40)  # web -> db: not allowed
        send_udp(node["c"], node["b"].ip, 7300, 15)  # api -> db: allowed by the policy
        received = 0
        sink.settimeout(2)
        while True:
            try:
                sink.recv(2048)
                received += 1
            except TimeoutError:
                break
    finally:
        sink.close()
    assert received == 15
    counted = nonzero(read(node))
    tw_b = f"cali-tw-{node['b'].host_veth}"
    [(key, (packets, nbytes))] = counted.items()
    assert (key.table, key.chain, key.owner) == ("ip filter", tw_b, "calico")
    assert (key.policy, key.policy_namespace) == ("allow-api-only", "data")
    assert "Drop if no policies passed packet" in key.rule and key.rule.endswith("-j DROP")
    assert (packets, nbytes) == (40, 40 * UDP_LEN)
    assert read(node)[key] == [40, 40 * UDP_LEN]  # a second read counts nothing twice
    table = next(t for t in reader.read_netns(node.path).tables if t.name == "filter")
    assert table.backend == backend


def test_calico_idle_drop_rules_are_listed_with_zero(node):
    node.restore("iptables-nft-restore", rulesets.calico(node, "data", "allow-api-only"))
    counters = read(node)
    # Every DROP of the ruleset, each named: 2 dispatch "Unknown interface", per
    # from-workload chain INVALID, VXLAN, IPIP, no profiles; per to-workload chain INVALID, no
    # profiles; and b's "no policies".
    assert len(counters) == 2 + 3 * 4 + 3 * 2 + 1
    assert all(v == [0, 0] for v in counters.values())
    assert {k.owner for k in counters} == {"calico"}
    named = [k for k in counters if k.policy]
    assert [(k.chain, k.policy, k.policy_namespace) for k in named] == [
        (f"cali-tw-{node['b'].host_veth}", "allow-api-only", "data")
    ]


def test_kube_router_reject_names_policy_and_pod_namespace(node):
    node.restore("iptables-nft-restore", rulesets.kube_router(node, "data", "allow-api-only", "db-0"))
    send_udp(node["a"], node["b"].ip, 7301, 25)
    counted = nonzero(read(node))
    [(key, value)] = counted.items()
    assert (key.chain, key.owner) == (rulesets.KR_POD_FW, "kube-router")
    assert (key.policy, key.policy_namespace) == ("allow-api-only", "data")
    assert key.rule.startswith(
        '-m comment --comment "rule to REJECT traffic destined for POD name:db-0 namespace: data"'
    )
    assert value == [25, 25 * UDP_LEN]


def test_kube_proxy_reject_names_the_service(node):
    cluster_ip = "10.96.0.50"
    # The node routes the Service range somewhere real (pod c), as a node's default route
    # would: without a route the packet would die before FORWARD.
    node.run(["ip", "route", "add", "10.96.0.0/12", "dev", node["c"].host_veth])
    node.restore("iptables-legacy-restore", rulesets.kube_proxy(cluster_ip, "data", "db", "pg", 5432))
    refused = 0
    with node["a"].entered():
        for _ in range(6):
            with socket.socket() as s:
                s.settimeout(3)
                try:
                    s.connect((cluster_ip, 5432))
                except ConnectionRefusedError:
                    refused += 1
    assert refused == 6
    [(key, (packets, nbytes))] = nonzero(read(node)).items()
    assert (key.chain, key.owner, key.policy, key.policy_namespace) == (
        "KUBE-SERVICES",
        "kube-proxy",
        "db:pg",
        "data",
    )
    assert packets == 6 and nbytes == 6 * 60  # one SYN each (20 IP + 40 TCP with options)


def test_native_nftables_rule_and_uncounted_policy(node):
    b = node["b"]
    script = f"""
table inet rtest {{
  chain forward_filter {{
    type filter hook forward priority 0; policy accept;
    ip daddr {b.ip} udp dport 7302 counter drop comment "block db 7302"
    ip daddr {b.ip} udp dport 7303 drop
  }}
  chain inbound {{
    type filter hook input priority 0; policy drop;
  }}
}}
"""
    subprocess.run(
        ["ip", "netns", "exec", node.netns, "nft", "-f", "-"],
        input=script,
        text=True,
        check=True,
        capture_output=True,
    )
    send_udp(node["a"], b.ip, 7302, 12)
    send_udp(node["a"], b.ip, 7303, 5)
    ruleset = reader.read_netns(node.path)
    counted = nonzero(drops.drop_counters(ruleset.tables, node.netns))
    [(key, value)] = counted.items()
    assert (key.table, key.chain, key.owner) == ("inet rtest", "forward_filter", "other")
    assert key.rule == f'ip daddr {b.ip} udp dport 7302 drop comment "block db 7302"'
    assert value == [12, 12 * UDP_LEN]
    assert drops.uncounted(ruleset.tables) == 2  # the rule without counter, the input policy


def test_long_rule_text_is_bounded_and_unique():
    long_a = "-m comment --comment " + "x" * 300 + " -j DROP"
    long_b = "-m comment --comment " + "x" * 300 + " -j REJECT"
    a, b = drops.bound_rule(long_a), drops.bound_rule(long_b)
    assert len(a) == len(b) == drops.RULE_KEEP + 13
    assert a != b and a[:180] == b[:180]
    assert drops.bound_rule("  -j   DROP ") == "-j DROP"


def test_rule_spec_tokens_follow_iptables_save_quoting():
    from retina_agent.netfilter.iptables import parse_rule_spec

    target, comments, goto = parse_rule_spec(
        r'-p tcp -m comment --comment "say \"hi\" -j ACCEPT" -m tcp --dport 5 -j REJECT '
        "--reject-with icmp-port-unreachable"
    )
    assert (target, comments, goto) == ("REJECT", ['say "hi" -j ACCEPT'], False)
    assert parse_rule_spec("-i cali+ -g cali-fw-x") == ("cali-fw-x", [], True)
