"""Who wrote a drop rule, and which policy or Service it enforces.

The layouts recognised, as those projects write them (from their source as of the version
named; the tests build rulesets of exactly these shapes):

**Calico v3.26, iptables dataplane** (felix ``rules/endpoints.go``, ``rules/policy.go``).
Every rule carries ``-m comment --comment "cali:<16-char rule hash>"``. A policy's chains are
``cali-pi-<id>`` (ingress) and ``cali-po-<id>`` (egress); ``<id>`` is the name, or ``_`` and a
hash when too long for iptables' 28 characters, so the name is read from the comment on the
chain's first rule, ``Policy <namespace>/<name> ingress|egress`` (GlobalNetworkPolicy: no
namespace). A Kubernetes NetworkPolicy ``deny-from-web`` is ``knp.default.deny-from-web`` to
Calico; a Calico NetworkPolicy in the default tier ``default.<name>``: both are reported by
their Kubernetes object name. Policy chains only mark what they accept; the drop is in the
endpoint chain, ``cali-tw-<iface>`` (to the pod) or ``cali-fw-<iface>`` (from it):
``"Drop if no policies passed packet"`` (the policies it jumped to: those are named) and
``"Drop if no profiles matched"``. An explicit Deny rule in a Calico policy is a DROP in the
policy chain itself.

**kube-router v2.0** (``pkg/controllers/netpol/pod_fw.go``, ``policy.go``). Per pod a chain
``KUBE-POD-FW-<hash>`` that jumps to each policy chain ``KUBE-NWPLCY-<hash>`` with comment
``run through nw policy <name>`` and ends with ``-m comment --comment "rule to REJECT traffic
destined for POD name:<pod> namespace: <ns>" -m mark ! --mark 0x10000/0x10000 -j REJECT``
(``rule to REJECT traffic from POD ...`` for egress); policy chains carry ``rule to ACCEPT
traffic from ... selected by policy name <name> namespace <ns>``.

**kube-proxy v1.28, iptables mode** (``pkg/proxy/iptables/proxier.go``). A Service port
without endpoints is a REJECT in ``KUBE-SERVICES`` (cluster IP) or ``KUBE-EXTERNAL-SERVICES``
(node ports, external IPs) with comment ``<namespace>/<service>[:<port name>] has no
endpoints``; ``KUBE-PROXY-FIREWALL`` drops sources outside ``loadBalancerSourceRanges``
(``<ns>/<svc>:<port> traffic not accepted by KUBE-FW-...``); ``KUBE-FORWARD`` drops INVALID
conntrack state. For kube-proxy, ``policy`` is the Service port (``db:pg``) and
``policy_namespace`` its namespace. kubelet's ``KUBE-FIREWALL`` (``block incoming localnet
connections``) is owner ``kubelet``.

Anything else is owner ``other``, named by table, chain and rule text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from retina_agent.netfilter.model import Chain, Rule, Table

_CALICO_POLICY = re.compile(r"^Policy (\S+) (ingress|egress)$")
_KR_POD = re.compile(r"POD name:\s*(\S+) namespace:\s*(\S+)")
_KR_JUMP = re.compile(r"^run through nw policy (\S+)$")
_KR_POLICY = re.compile(r"selected by policy name:?\s*(\S+) namespace:?\s*(\S+)")
_KP_NO_ENDPOINTS = re.compile(r"^(\S+?)/(\S+) has no endpoints$")
_KP_FIREWALL = re.compile(r"^(\S+?)/(\S+) traffic not accepted by ")
_KUBE_PROXY_CHAINS = (
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-FORWARD",
    "KUBE-PROXY-FIREWALL",
    "KUBE-FW-",
    "KUBE-SVC-",
    "KUBE-SEP-",
    "KUBE-EXT-",
    "KUBE-POSTROUTING",
    "KUBE-MARK-",
    "KUBE-PROXY-CANARY",
)


@dataclass(frozen=True)
class Owner:
    owner: str  # calico, kube-router, kube-proxy, kubelet, other
    policy: str = ""
    policy_namespace: str = ""


def calico_policy_name(full: str) -> tuple[str, str]:
    """``shop/knp.default.deny-from-web`` -> (``deny-from-web``, ``shop``)."""
    namespace, _, name = full.rpartition("/")
    for prefix in ("knp.default.", "default."):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    return name, namespace


def _calico_chain_policy(chain: Chain | None) -> tuple[str, str] | None:
    if chain is None:
        return None
    for comment in chain.comments():
        if m := _CALICO_POLICY.match(comment):
            return calico_policy_name(m[1])
    return None


def _join(names: list[tuple[str, str]]) -> Owner:
    policies = sorted({n for n, _ in names})
    namespaces = sorted({ns for _, ns in names})
    return Owner("calico", ",".join(policies), ",".join(namespaces))


def _calico(table: Table, chain: Chain, rule: Rule | None) -> Owner:
    if chain.name.startswith(("cali-pi-", "cali-po-")):
        found = _calico_chain_policy(chain)
        return _join([found]) if found else Owner("calico", chain.name)
    comments = rule.comments if rule else []
    if "Drop if no policies passed packet" in comments:
        prefix = "cali-pi-" if chain.name.startswith("cali-tw-") else "cali-po-"
        names = []
        for target in chain.jumps():
            if target.startswith(prefix):
                found = _calico_chain_policy(table.chains.get(target))
                names.append(found or (target, ""))
        return _join(names) if names else Owner("calico")
    return Owner("calico")


def _kube_router(table: Table, chain: Chain, rule: Rule | None) -> Owner:
    comments = rule.comments if rule else []
    if chain.name.startswith("KUBE-NWPLCY-"):
        for comment in chain.comments():
            if m := _KR_POLICY.search(comment):
                return Owner("kube-router", m[1], m[2])
        return Owner("kube-router")
    namespace = ""
    for comment in comments:
        if m := _KR_POD.search(comment):
            namespace = m[2]
    policies = sorted({m[1] for c in chain.comments() if (m := _KR_JUMP.match(c))})
    return Owner("kube-router", ",".join(policies), namespace)


def _kube_proxy(rule: Rule | None) -> Owner:
    for comment in rule.comments if rule else []:
        if m := _KP_NO_ENDPOINTS.match(comment) or _KP_FIREWALL.match(comment):
            return Owner("kube-proxy", m[2], m[1])
    return Owner("kube-proxy")


def name_owner(table: Table, chain: Chain, rule: Rule | None) -> Owner:
    """The owner of ``rule`` in ``chain`` (``rule`` None: the chain's policy)."""
    name = chain.name
    if name.startswith("cali-") or any(c.startswith("cali:") for c in (rule.comments if rule else [])):
        return _calico(table, chain, rule)
    if name.startswith(("KUBE-POD-FW-", "KUBE-NWPLCY-", "KUBE-ROUTER-")):
        return _kube_router(table, chain, rule)
    if name in ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY"):
        return Owner("kubelet")
    if name.startswith(_KUBE_PROXY_CHAINS):
        return _kube_proxy(rule)
    return Owner("other")
