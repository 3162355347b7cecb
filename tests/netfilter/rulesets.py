# ruff: noqa: E501 - rules are kept one per line, verbatim as iptables-save prints them
"""Rulesets shaped exactly like Calico, kube-router and kube-proxy write them.

Each function returns ``iptables-restore`` text for a ``RoutedNode`` (the node's namespace)
and the sets it needs. Chain layouts, rule order, marks and comment texts follow:

- Calico v3.26, felix iptables dataplane (``felix/rules/static.go``, ``endpoints.go``,
  ``policy.go``, ``dispatch.go``): ``cali:<hash>`` on every rule, ``cali-FORWARD`` ->
  ``cali-to-wl-dispatch`` -> ``cali-tw-<iface>`` -> ``cali-pi-<id>``; a policy chain marks
  accepted packets (0x10000) and the endpoint chain drops the rest; ipsets ``cali40s:<hash>``.
- kube-router v2.0 (``pkg/controllers/netpol``): ``KUBE-ROUTER-FORWARD`` ->
  ``KUBE-POD-FW-<hash>`` -> ``KUBE-NWPLCY-<hash>``, NFLOG then REJECT of unmarked packets;
  ipsets ``KUBE-SRC-<hash>``/``KUBE-DST-<hash>``.
- kube-proxy v1.28, iptables mode (``pkg/proxy/iptables/proxier.go``): ``FORWARD`` ->
  ``KUBE-SERVICES``, a REJECT per Service port without endpoints.

The ``cali:`` hashes and chain hashes are fixed strings of the right length and alphabet
(the real ones are hashes of things this test does not have).
"""

from __future__ import annotations

from tests.netfilter.routed import RoutedNode

CALICO_POLICY_CHAIN = "cali-pi-_Lpc9Tu2g6zA7RfChhcU"  # GetLengthLimitedID: "_" + hash
CALICO_API_SET = "cali40s:Qx1nY9nF0pV0ZgsWgVAnDeS"


def calico(node: RoutedNode, policy_namespace: str, policy: str) -> str:
    """Pod b (``data/db-0``) selected by a Kubernetes NetworkPolicy that allows ingress only
    from pods labelled app=api (pod c); pod a's packets to b fall through to the endpoint
    chain's ``Drop if no policies passed packet``."""
    a, b, c = node["a"], node["b"], node["c"]
    node.ipset(CALICO_API_SET, f"{c.ip}/32")
    pi = CALICO_POLICY_CHAIN
    tw_b, tw_a, tw_c = (f"cali-tw-{p.host_veth}" for p in (b, a, c))
    fw_a, fw_b, fw_c = (f"cali-fw-{p.host_veth}" for p in (a, b, c))
    endpoint_chains = "\n".join(f":{n} - [0:0]" for n in (tw_a, tw_b, tw_c, fw_a, fw_b, fw_c))
    return f"""*filter
:cali-FORWARD - [0:0]
:cali-from-wl-dispatch - [0:0]
:cali-to-wl-dispatch - [0:0]
{endpoint_chains}
:{pi} - [0:0]
:cali-pri-kns.{policy_namespace} - [0:0]
:cali-pri-kns.shop - [0:0]
:cali-pro-kns.shop - [0:0]
:cali-pro-kns.{policy_namespace} - [0:0]
-A FORWARD -m comment --comment "cali:wUHhoiAYhphO9Mso" -j cali-FORWARD
-A cali-FORWARD -m comment --comment "cali:vjrMJCRpqwy5oRoX" -j MARK --set-xmark 0x0/0xe0000
-A cali-FORWARD -i cali+ -m comment --comment "cali:8ZoYfO5HKXWbB3pk" -j cali-from-wl-dispatch
-A cali-FORWARD -o cali+ -m comment --comment "cali:jdEuaPBe14V2hutn" -j cali-to-wl-dispatch
-A cali-FORWARD -m comment --comment "cali:MH9kMp5aNICL-Olv" -m comment --comment "Policy explicitly accepted packet." -m mark --mark 0x10000/0x10000 -j ACCEPT
-A cali-from-wl-dispatch -i {a.host_veth} -m comment --comment "cali:ZQ3V0aPbLz_HdjHn" -g {fw_a}
-A cali-from-wl-dispatch -i {b.host_veth} -m comment --comment "cali:Xe2Wq7Nc4Lh9Ud1F" -g {fw_b}
-A cali-from-wl-dispatch -i {c.host_veth} -m comment --comment "cali:Dk8Ry3Mv6Pb0Zt5S" -g {fw_c}
-A cali-from-wl-dispatch -m comment --comment "cali:rKj6kdXJtB5LQ8gT" -m comment --comment "Unknown interface" -j DROP
-A cali-to-wl-dispatch -o {a.host_veth} -m comment --comment "cali:e0mT2nK8yVn3qdaQ" -g {tw_a}
-A cali-to-wl-dispatch -o {b.host_veth} -m comment --comment "cali:hFm8CkQz7sRdbV1w" -g {tw_b}
-A cali-to-wl-dispatch -o {c.host_veth} -m comment --comment "cali:Y2sL0qPxU4vWcN9e" -g {tw_c}
-A cali-to-wl-dispatch -m comment --comment "cali:Oo7cLd4jKsuZlDVQ" -m comment --comment "Unknown interface" -j DROP
{_calico_from_workload(fw_a, "kns.shop")}
{_calico_from_workload(fw_b, f"kns.{policy_namespace}")}
{_calico_from_workload(fw_c, f"kns.{policy_namespace}")}
-A cali-pro-kns.shop -m comment --comment "cali:Wm5dTq2Jz8Xc1VbN" -j MARK --set-xmark 0x10000/0x10000
-A cali-pro-kns.shop -m comment --comment "cali:Pz7hFs3Qk0Lw6NyR" -m mark --mark 0x10000/0x10000 -j RETURN
-A cali-pro-kns.{policy_namespace} -m comment --comment "cali:Vh4Qm8Zd1Tx5Kc3N" -j MARK --set-xmark 0x10000/0x10000
-A cali-pro-kns.{policy_namespace} -m comment --comment "cali:Jw6Ls2Rb9Yp0Fg7M" -m mark --mark 0x10000/0x10000 -j RETURN
{_calico_to_workload(tw_b, pi, f"kns.{policy_namespace}")}
{_calico_to_workload(tw_a, None, "kns.shop")}
{_calico_to_workload(tw_c, None, f"kns.{policy_namespace}")}
-A {pi} -m comment --comment "cali:vT4nZ8cQw1Xs6LpD" -m comment --comment "Policy {policy_namespace}/knp.default.{policy} ingress" -m set --match-set {CALICO_API_SET} src -j MARK --set-xmark 0x10000/0x10000
-A {pi} -m comment --comment "cali:Bq6wNs0Ye3Tk9RmJ" -m mark --mark 0x10000/0x10000 -j RETURN
-A cali-pri-kns.{policy_namespace} -m comment --comment "cali:Lf1Xb8Vq4Zn7Hc2W" -j MARK --set-xmark 0x10000/0x10000
-A cali-pri-kns.{policy_namespace} -m comment --comment "cali:Sd5Rj9Wm3Qt0Ky6P" -m mark --mark 0x10000/0x10000 -j RETURN
-A cali-pri-kns.shop -m comment --comment "cali:Mx2Gp7Lb5Vw8Nd4Q" -j MARK --set-xmark 0x10000/0x10000
-A cali-pri-kns.shop -m comment --comment "cali:Cz9Ht3Fr6Yk1Js0X" -m mark --mark 0x10000/0x10000 -j RETURN
COMMIT
"""


def _calico_from_workload(chain: str, profile: str) -> str:
    h = chain[-6:]
    return "\n".join(
        [
            f'-A {chain} -m comment --comment "cali:fC{h}ct01" -m conntrack --ctstate '
            "RELATED,ESTABLISHED -j ACCEPT",
            f'-A {chain} -m comment --comment "cali:fI{h}inv1" -m conntrack --ctstate INVALID -j DROP',
            f'-A {chain} -m comment --comment "cali:fM{h}clr0" -j MARK --set-xmark 0x0/0x10000',
            f'-A {chain} -p udp -m comment --comment "cali:fV{h}vxl1" -m comment --comment '
            '"Drop VXLAN encapped packets originating in workloads" -m multiport --dports 4789 -j DROP',
            f'-A {chain} -p ipencap -m comment --comment "cali:fP{h}ipp1" -m comment --comment '
            '"Drop IPinIP encapped packets originating in workloads" -j DROP',
            f'-A {chain} -m comment --comment "cali:fJ{h}prf1" -j cali-pro-{profile}',
            f'-A {chain} -m comment --comment "cali:fR{h}racc" -m comment --comment '
            '"Return if profile accepted" -m mark --mark 0x10000/0x10000 -j RETURN',
            f'-A {chain} -m comment --comment "cali:fD{h}rdrp" -m comment --comment '
            '"Drop if no profiles matched" -j DROP',
        ]
    )


def _calico_to_workload(chain: str, policy_chain: str | None, profile: str) -> str:
    rules = [
        f'-A {chain} -m comment --comment "cali:aX{chain[-6:]}0ct1" -m conntrack --ctstate '
        "RELATED,ESTABLISHED -j ACCEPT",
        f'-A {chain} -m comment --comment "cali:iN{chain[-6:]}va1d" -m conntrack --ctstate INVALID -j DROP',
        f'-A {chain} -m comment --comment "cali:mK{chain[-6:]}c1r0" -j MARK --set-xmark 0x0/0x10000',
    ]
    if policy_chain:
        rules += [
            f'-A {chain} -m comment --comment "cali:sT{chain[-6:]}p0l1" -m comment --comment '
            '"Start of policies" -j MARK --set-xmark 0x0/0x20000',
            f'-A {chain} -m comment --comment "cali:jP{chain[-6:]}pi01" -m mark --mark '
            f"0x0/0x20000 -j {policy_chain}",
            f'-A {chain} -m comment --comment "cali:rA{chain[-6:]}pacc" -m comment --comment '
            '"Return if policy accepted" -m mark --mark 0x10000/0x10000 -j RETURN',
            f'-A {chain} -m comment --comment "cali:dN{chain[-6:]}pdrp" -m comment --comment '
            '"Drop if no policies passed packet" -m mark --mark 0x0/0x20000 -j DROP',
        ]
    rules += [
        f'-A {chain} -m comment --comment "cali:jR{chain[-6:]}prf1" -j cali-pri-{profile}',
        f'-A {chain} -m comment --comment "cali:rP{chain[-6:]}racc" -m comment --comment '
        '"Return if profile accepted" -m mark --mark 0x10000/0x10000 -j RETURN',
        f'-A {chain} -m comment --comment "cali:dP{chain[-6:]}rdrp" -m comment --comment '
        '"Drop if no profiles matched" -j DROP',
    ]
    return "\n".join(rules)


KR_POD_FW = "KUBE-POD-FW-GF4SCXXMPXD7VZSJ"
KR_POLICY = "KUBE-NWPLCY-7QX2NBSNMGZ4BJ5W"
KR_SRC_SET = "KUBE-SRC-RJ6KZ3BH5PC2VXQN"
KR_DST_SET = "KUBE-DST-XK5TB2QWGJ3MZ7SL"


def kube_router(node: RoutedNode, policy_namespace: str, policy: str, pod: str) -> str:
    """Pod b (``pod`` in ``policy_namespace``) selected by ``policy``, which accepts only pod c."""
    b, c = node["b"], node["c"]
    node.ipset(KR_SRC_SET, f"{c.ip}/32")
    node.ipset(KR_DST_SET, f"{b.ip}/32")
    who = f"POD name:{pod} namespace: {policy_namespace}"
    accept = (
        f"rule to ACCEPT traffic from source pods to dest pods selected by policy name "
        f"{policy} namespace {policy_namespace}"
    )
    return f"""*filter
:KUBE-ROUTER-FORWARD - [0:0]
:KUBE-ROUTER-INPUT - [0:0]
:KUBE-ROUTER-OUTPUT - [0:0]
:KUBE-NWPLCY-DEFAULT - [0:0]
:{KR_POD_FW} - [0:0]
:{KR_POLICY} - [0:0]
-A FORWARD -m comment --comment "kube-router netpol - TEMCG2JMHZYE7H7T" -j KUBE-ROUTER-FORWARD
-A KUBE-ROUTER-FORWARD -d {b.ip}/32 -m comment --comment "rule to jump traffic destined to {who} to chain {KR_POD_FW}" -j {KR_POD_FW}
-A KUBE-ROUTER-FORWARD -m comment --comment "rule to explicitly ACCEPT traffic that comply to network policies" -m mark --mark 0x20000/0x20000 -j ACCEPT
-A KUBE-NWPLCY-DEFAULT -m comment --comment "rule to mark traffic matching a network policy" -j MARK --set-xmark 0x10000/0x10000
-A {KR_POD_FW} -m comment --comment "rule for stateful firewall for pod" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A {KR_POD_FW} -m comment --comment "rule to drop invalid state for pod" -m conntrack --ctstate INVALID -j DROP
-A {KR_POD_FW} -d {b.ip}/32 -m comment --comment "rule to permit the traffic traffic to pods when source is the pod's local node" -m addrtype --src-type LOCAL -j ACCEPT
-A {KR_POD_FW} -d {b.ip}/32 -m comment --comment "run through nw policy {policy}" -j {KR_POLICY}
-A {KR_POD_FW} -m comment --comment "rule to log dropped traffic {who}" -m mark ! --mark 0x10000/0x10000 -m limit --limit 10/min --limit-burst 10 -j NFLOG --nflog-group 100
-A {KR_POD_FW} -m comment --comment "rule to REJECT traffic destined for {who}" -m mark ! --mark 0x10000/0x10000 -j REJECT --reject-with icmp-port-unreachable
-A {KR_POD_FW} -j MARK --set-xmark 0x0/0x10000
-A {KR_POD_FW} -m comment --comment "set mark to ACCEPT traffic that comply to network policies" -j MARK --set-xmark 0x20000/0x20000
-A {KR_POLICY} -m comment --comment "{accept}" -m set --match-set {KR_SRC_SET} src -m set --match-set {KR_DST_SET} dst -j MARK --set-xmark 0x10000/0x10000
-A {KR_POLICY} -m comment --comment "{accept}" -m set --match-set {KR_SRC_SET} src -m set --match-set {KR_DST_SET} dst -m mark --mark 0x10000/0x10000 -j RETURN
COMMIT
"""


def kube_proxy(cluster_ip: str, namespace: str, service: str, port_name: str, port: int) -> str:
    """A Service port without endpoints, as kube-proxy's iptables mode rejects it."""
    svc = f"{namespace}/{service}:{port_name}"
    return f"""*filter
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A INPUT -j KUBE-FIREWALL
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-SERVICES -d {cluster_ip}/32 -p tcp -m comment --comment "{svc} has no endpoints" -m tcp --dport {port} -j REJECT --reject-with icmp-port-unreachable
COMMIT
"""
