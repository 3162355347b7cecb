"""Why can't pod A reach pod B: the pair's evidence from Prometheus, and the verdict it supports.

Evidence, over the window: packets each way (``adv_forward_count``), drops by the kernel's
reason (``adv_drop_count``), TCP flags (``adv_tcpflags_count``), retransmissions
(``adv_tcpretrans_count``), the DNS answers A got (``adv_dns_response_count``) and the netfilter
rules that dropped packets on the pods' nodes (``netfilter_drop_count``), plus which agents
are scraped and whether pod-level metrics are on. With ``remoteContext: true`` the flow
metrics name both pods, so every count is the pair's own; with the local context they name one
pod, so A's and B's totals (with every peer) stand in, and the verdict says so.

Verdicts (docs/diagnose.md explains each), first that applies wins, every one that applies is
listed: NO_AGENT, POD_LEVEL_OFF (no data: said, not guessed), POLICY_DROP, NOTHING_LISTENING,
DNS_NXDOMAIN, OTHER_DROPS, RETRANSMISSIONS, ONE_WAY, NO_TRAFFIC, FLOWS_OK.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from retina_capture.observe import cluster
from retina_capture.observe.prometheus import Prometheus, present, window_delta

ADV = "networkobservability_adv_"
NETFILTER = "networkobservability_netfilter_drop_count"
STATUS = "controlplane_networkobservability_plugin_status"
SERIES = "controlplane_networkobservability_series"
POLICY_OWNERS = ("calico", "kube-router")
ORDER = (
    "NO_AGENT",
    "POD_LEVEL_OFF",
    "POLICY_DROP",
    "NOTHING_LISTENING",
    "DNS_NXDOMAIN",
    "OTHER_DROPS",
    "RETRANSMISSIONS",
    "ONE_WAY",
    "NO_TRAFFIC",
    "FLOWS_OK",
)
#: kernel drop reasons that are a socket's bookkeeping as it closes (queued buffers freed), not
#: packets lost between the pods: counted in the evidence, never a finding
CLOSING = frozenset({"QUEUE_PURGE", "SOCKET_CLOSE"})
RETRANS_RATIO = 0.02  # retransmitted segments per packet sent worth a finding


@dataclass
class Finding:
    code: str
    summary: str
    evidence: list[str] = field(default_factory=list)


@dataclass
class NodeCoverage:
    node: str
    agent: bool = False
    pod_level: bool = False
    plugins: dict[str, str] = field(default_factory=dict)  # plugin -> state


@dataclass
class Diagnosis:
    a: cluster.PodInfo
    b: cluster.PodInfo
    window: str
    context: str  # remote, local, none
    coverage: list[NodeCoverage]
    findings: list[Finding]
    counts: dict[str, Any]

    @property
    def verdict(self) -> Finding:
        return self.findings[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.code,
            "summary": self.verdict.summary,
            "evidence": self.verdict.evidence,
            "findings": [asdict(f) for f in self.findings],
            "pods": {"a": asdict(self.a), "b": asdict(self.b)},
            "window": self.window,
            "context": self.context,
            "coverage": [asdict(c) for c in self.coverage],
            "counts": self.counts,
        }


def _n(value: float) -> str:
    return f"{int(round(value)):,}"


class _Reader:
    """The pair's counts from Prometheus, in whichever context the agents run."""

    def __init__(
        self,
        prom: Prometheus,
        a: cluster.PodInfo,
        b: cluster.PodInfo,
        window: float,
        context: str,
        at: float | None,
    ) -> None:
        self.prom, self.a, self.b, self.window, self.context, self.at = prom, a, b, window, context, at

    def pair(self, src: cluster.PodInfo, dst: cluster.PodInfo) -> list[dict[str, str]]:
        """Label sets that select src -> dst packets (local context: one pod's side each)."""
        if self.context == "remote":
            return [
                {
                    "source_namespace": src.namespace,
                    "source_podname": src.name,
                    "destination_namespace": dst.namespace,
                    "destination_podname": dst.name,
                }
            ]
        return [
            {"namespace": src.namespace, "podname": src.name, "direction": "egress"},
            {"namespace": dst.namespace, "podname": dst.name, "direction": "ingress"},
        ]

    def delta(self, metric: str, labels: dict[str, str], by: tuple[str, ...]) -> dict:
        return window_delta(self.prom, metric, labels, by, self.window, self.at)

    def flow(self, metric: str, src, dst, by: tuple[str, ...] = ()) -> dict:
        """Counts of src -> dst by ``by``: the larger of the two observation points (a packet
        between two pods of one node is seen leaving one and entering the other)."""
        out: dict = {}
        for labels in self.pair(src, dst):
            for key, value in self.delta(metric, labels, (*by, "direction")).items():
                out[key[:-1]] = max(out.get(key[:-1], 0.0), value)
        return out

    def drops(self, src, dst) -> dict:
        """Drops of src -> dst packets by reason (a drop is counted once, where it happened)."""
        out: dict = {}
        for labels in self.pair(src, dst):
            labels = {k: v for k, v in labels.items() if k != "direction"}
            for key, value in self.delta(ADV + "drop_count", labels, ("reason",)).items():
                out[key] = max(out.get(key, 0.0), value)
        return out


def coverage(prom: Prometheus, nodes: list[str], window: float, at: float | None) -> list[NodeCoverage]:
    result = []
    for node in nodes:
        c = NodeCoverage(node)
        for labels in present(prom, STATUS, {"instance": node}, window, ("plugin", "state"), at):
            c.agent = True
            c.plugins[labels.get("plugin", "")] = labels.get("state", "")
        c.pod_level = bool(present(prom, SERIES, {"instance": node}, window, (), at))
        result.append(c)
    return result


def detect_context(prom: Prometheus, window: float, at: float | None) -> str:
    seconds = f"{max(int(window), 1)}s"
    for context, label in (("remote", "source_podname"), ("local", "podname")):
        q = f'count(last_over_time({ADV}forward_count{{{label}!=""}}[{seconds}]))'
        if prom.query(q, at):
            return context
    return "none"


def diagnose(
    prom: Prometheus,
    client,
    a: cluster.PodInfo,
    b: cluster.PodInfo,
    window: float,
    window_text: str,
    at: float | None = None,
) -> Diagnosis:
    nodes = list(dict.fromkeys(n for n in (a.node, b.node) if n))
    cov = coverage(prom, nodes, window, at)
    by_node = {c.node: c for c in cov}
    counts: dict[str, Any] = {}

    def node_of(pod: cluster.PodInfo) -> NodeCoverage:
        return by_node.get(pod.node) or NodeCoverage(pod.node or "(not scheduled)")

    missing = [p for p in (a, b) if not node_of(p).agent]
    if len(missing) == 2 or not nodes:
        where = ", ".join(sorted({f"{node_of(p).node} (pod {p.ref})" for p in missing}))
        return Diagnosis(
            a,
            b,
            window_text,
            "none",
            cov,
            [
                Finding(
                    "NO_AGENT",
                    f"no data: no retina-agent was scraped on {where} in the last "
                    f"{window_text}, so nothing about this pair was measured",
                    [f"Prometheus has no {STATUS} series with instance={node_of(p).node!r}" for p in missing]
                    + [
                        "install the agent on that node (it runs as a DaemonSet; "
                        "check its tolerations and nodeSelector) or widen --since"
                    ],
                )
            ],
            counts,
        )
    notes = [
        f"no retina-agent is scraped on node {node_of(p).node}: pod {p.ref}'s side is not seen"
        for p in missing
    ]
    if not any(node_of(p).pod_level for p in (a, b) if node_of(p).agent):
        on = ", ".join(c.node for c in cov if c.agent)
        return Diagnosis(
            a,
            b,
            window_text,
            "none",
            cov,
            [
                Finding(
                    "POD_LEVEL_OFF",
                    f"no data: pod-level metrics are off on {on} (the agent runs, but "
                    "enablePodLevel is false), so there are no per-pod counts to judge this pair by",
                    [
                        f"no {SERIES} series from {on}",
                        "set enablePodLevel: true (and remoteContext: true "
                        "for pair-level counts) in the agent's config",
                        *notes,
                    ],
                )
            ],
            counts,
        )

    context = detect_context(prom, window, at)
    r = _Reader(prom, a, b, window, context, at)
    fwd_ab = sum(r.flow(ADV + "forward_count", a, b).values())
    fwd_ba = sum(r.flow(ADV + "forward_count", b, a).values())
    bytes_ab = sum(r.flow(ADV + "forward_bytes", a, b).values())
    bytes_ba = sum(r.flow(ADV + "forward_bytes", b, a).values())
    drops_ab = r.drops(a, b)
    drops_ba = r.drops(b, a)
    # destination_port is there when the MetricsConfiguration asks for it: the port of A's SYNs
    flags_ab: dict[str, float] = {}
    syn_ports: set[str] = set()
    for (flag, port), v in r.flow(ADV + "tcpflags_count", a, b, ("flag", "destination_port")).items():
        flags_ab[flag] = flags_ab.get(flag, 0) + v
        if flag == "SYN" and port not in ("", "unknown", "0"):
            syn_ports.add(port)
    flags_ba = {k[0]: v for k, v in r.flow(ADV + "tcpflags_count", b, a, ("flag",)).items()}
    retrans = (
        sum(r.flow(ADV + "tcpretrans_count", a, b).values()),
        sum(r.flow(ADV + "tcpretrans_count", b, a).values()),
    )
    reasons_ab: dict[str, float] = {}
    for key, value in drops_ab.items():
        reasons_ab[key[0]] = reasons_ab.get(key[0], 0) + value
    reasons_ba: dict[str, float] = {}
    for key, value in drops_ba.items():
        reasons_ba[key[0]] = reasons_ba.get(key[0], 0) + value
    counts.update(
        {
            "packets_a_to_b": fwd_ab,
            "packets_b_to_a": fwd_ba,
            "bytes_a_to_b": bytes_ab,
            "bytes_b_to_a": bytes_ba,
            "drops_a_to_b": reasons_ab,
            "drops_b_to_a": reasons_ba,
            "tcp_flags_a_to_b": flags_ab,
            "tcp_flags_b_to_a": flags_ba,
            "retransmissions_a_to_b": retrans[0],
            "retransmissions_b_to_a": retrans[1],
        }
    )
    if context == "local":
        notes.append(
            "local context: counts are A's and B's with every peer, not only each "
            "other (remoteContext: true gives the pair's own)"
        )
    traffic = (
        f"A->B {_n(fwd_ab)} packets / {_n(bytes_ab)} bytes, B->A {_n(fwd_ba)} packets / {_n(bytes_ba)} bytes"
    )
    findings: list[Finding] = []

    # -- netfilter: the rule, the policy ----------------------------------------------------
    nf_drops = reasons_ab.get("NETFILTER_DROP", 0) + reasons_ba.get("NETFILTER_DROP", 0)
    if nf_drops:
        findings.append(
            _policy_finding(prom, client, r, a, b, reasons_ab, reasons_ba, nodes, counts, traffic)
        )

    # -- nothing listening --------------------------------------------------------------------
    no_socket = reasons_ab.get("NO_SOCKET", 0)
    rst_back = flags_ba.get("RST", 0)
    refused = flags_ab.get("SYN", 0) > 0 and rst_back > 0 and flags_ba.get("SYNACK", 0) == 0
    if no_socket or refused:
        ports = sorted(syn_ports)
        where = f"{b.ref}:{','.join(ports)}" if ports else f"{b.ref} at the port A connects to"
        evidence = [
            f"{_n(no_socket)} packets from A dropped at B with NO_SOCKET (no socket "
            "bound to the destination port)",
            f"B answered with {_n(rst_back)} RST, {_n(flags_ba.get('SYNACK', 0))} "
            f"SYN-ACK to {_n(flags_ab.get('SYN', 0))} SYN from A",
            traffic,
        ]
        if not ports and context == "remote":
            evidence.append(
                "add port to the MetricsConfiguration's destinationLabels for "
                "tcpflags_count to see which port"
            )
        findings.append(
            Finding(
                "NOTHING_LISTENING",
                f"nothing listens on {where} (NO_SOCKET, "
                f"RSTs): {_n(max(no_socket, flags_ab.get('SYN', 0)))} connection "
                "attempts from A refused",
                evidence,
            )
        )

    # -- DNS ----------------------------------------------------------------------------------
    dns = _dns_finding(client, r, a, b, counts)
    if dns is not None:
        findings.append(dns)

    # -- other drops --------------------------------------------------------------------------
    other = {k: v for k, v in reasons_ab.items() if k not in ("NETFILTER_DROP", "NO_SOCKET", *CLOSING)}
    other_ba = {k: v for k, v in reasons_ba.items() if k not in ("NETFILTER_DROP", *CLOSING)}
    if other or other_ba:
        parts = [f"{reason} {_n(v)} (A->B)" for reason, v in sorted(other.items())]
        parts += [f"{reason} {_n(v)} (B->A)" for reason, v in sorted(other_ba.items())]
        findings.append(
            Finding(
                "OTHER_DROPS", "the kernel dropped packets between A and B: " + ", ".join(parts), [traffic]
            )
        )

    # -- retransmissions ----------------------------------------------------------------------
    sent = max(fwd_ab, 1), max(fwd_ba, 1)
    if retrans[0] / sent[0] > RETRANS_RATIO or retrans[1] / sent[1] > RETRANS_RATIO:
        findings.append(
            Finding(
                "RETRANSMISSIONS",
                f"TCP retransmits: {_n(retrans[0])} A->B, "
                f"{_n(retrans[1])} B->A (loss on the path or a slow peer)",
                [traffic],
            )
        )

    # -- plain traffic ------------------------------------------------------------------------
    dropped = sum(v for k, v in [*reasons_ab.items(), *reasons_ba.items()] if k not in CLOSING)
    if bool(fwd_ab) != bool(fwd_ba) and not dropped:
        sender, receiver = ("A", "B") if fwd_ab else ("B", "A")
        findings.append(
            Finding(
                "ONE_WAY",
                f"{sender} sends to {receiver} but {receiver} never answers, and no drop was seen",
                [traffic],
            )
        )
    if not fwd_ab and not fwd_ba and not findings:
        findings.append(
            Finding(
                "NO_TRAFFIC",
                f"no packets between A and B in the last {window_text}",
                [
                    traffic,
                    "if A should have sent, check that "
                    "both pods' namespaces are selected by the MetricsConfiguration",
                ],
            )
        )
    if fwd_ab and fwd_ba and not dropped and not findings:
        findings.append(
            Finding(
                "FLOWS_OK",
                "traffic flows both ways, no drops",
                [traffic, f"retransmissions A->B {_n(retrans[0])}, B->A {_n(retrans[1])}"],
            )
        )
    if not findings:  # every count above leads to a finding; kept so a verdict always exists
        findings.append(
            Finding("FLOWS_OK" if fwd_ab and fwd_ba else "NO_TRAFFIC", "nothing wrong was seen", [traffic])
        )
    for f in findings:
        f.evidence += notes
    findings.sort(key=lambda f: ORDER.index(f.code))
    return Diagnosis(a, b, window_text, context, cov, findings, counts)


def _policy_finding(
    prom, client, r: _Reader, a, b, reasons_ab, reasons_ba, nodes, counts, traffic
) -> Finding:
    from_a = reasons_ab.get("NETFILTER_DROP", 0)
    direction_text = "from A" if from_a else "from B to A"
    dropped = from_a or reasons_ba.get("NETFILTER_DROP", 0)
    by = ("instance", "netns", "table", "chain", "rule", "owner", "policy", "policy_namespace")
    rules = []
    for node in nodes:
        for key, value in r.delta(NETFILTER, {"instance": node}, by).items():
            rules.append((dict(zip(by, key)), value))
    counts["netfilter_rules"] = [{**labels, "packets": value} for labels, value in rules]
    if not rules:
        return Finding(
            "POLICY_DROP",
            f"netfilter dropped {_n(dropped)} packets {direction_text} "
            "(NETFILTER_DROP); no rule counters were scraped: enable the agent's "
            "netfilter plugin to name the rule and policy",
            [traffic],
        )
    services_b = cluster.services_of(client, b) if client is not None else []

    def related(labels: dict[str, str]) -> bool:
        """A rule that can be the one: B's ingress or A's egress policy, one of B's Services,
        or a rule of no policy. Another pod's endpoint chain or another namespace's policy
        rule never is."""
        chain, rule = labels["chain"], labels["rule"]
        if chain.startswith(("cali-tw-", "cali-fw-")):
            return chain in (f"cali-tw-{calico_interface(b)}", f"cali-fw-{calico_interface(a)}")
        if chain.startswith("KUBE-POD-FW-") and "POD name:" in rule:
            return any(f"POD name:{p.name} namespace: {p.namespace}" in rule for p in (a, b))
        if labels["owner"] in POLICY_OWNERS and labels["policy_namespace"]:
            return bool({a.namespace, b.namespace} & set(labels["policy_namespace"].split(",")))
        if labels["owner"] == "kube-proxy" and labels["policy"]:
            return labels["policy_namespace"] == b.namespace and labels["policy"].split(":")[0] in services_b
        return True

    # The rule counted at least the pair's drops (half, for the two counters being read at
    # slightly different moments); a rule that dropped fewer cannot account for them.
    candidates = [(x, v) for x, v in rules if related(x) and v >= dropped / 2]
    if not candidates:
        return Finding(
            "POLICY_DROP",
            f"netfilter dropped {_n(dropped)} packets {direction_text} "
            "(NETFILTER_DROP), but no rule counter read on the pods' nodes accounts "
            "for them: the rule may sit in a namespace the netfilter plugin does not "
            "read (plugins.netfilter.namespaces) or keep no counter",
            [traffic]
            + [
                f"counted elsewhere: {x['table']} {x['chain']} ({x['owner']}"
                + (f", {x['policy_namespace']}/{x['policy']}" if x["policy"] else "")
                + f") dropped {_n(v)}"
                for x, v in rules[:3]
            ],
        )

    def rank(item) -> tuple:
        labels, value = item
        return (not labels["policy"], -value)

    rules = sorted(candidates, key=rank)
    labels, value = rules[0]
    rule_text = (
        f"rule {labels['table']} {labels['chain']}: {labels['rule']}"
        f" [{labels['owner']}, node {labels['instance']}"
        + (f", netns {labels['netns']}" if labels["netns"] != "host" else "")
        + "]"
    )
    evidence = [
        f"{_n(dropped)} packets {direction_text} dropped with NETFILTER_DROP",
        traffic,
        f"{rule_text} dropped {_n(value)} packets in the window (from every source)",
    ]
    evidence += [f"also: {x['table']} {x['chain']} ({x['owner']}) dropped {_n(v)}" for x, v in rules[1:4]]
    owner, policy, ns = labels["owner"], labels["policy"], labels["policy_namespace"]
    if owner == "kube-proxy" and policy:
        return Finding(
            "POLICY_DROP",
            f"Service {ns}/{policy} has no endpoints: kube-proxy "
            f"rejected {_n(dropped)} packets {direction_text} ({rule_text}, "
            "NETFILTER_DROP)",
            evidence,
        )
    if policy:
        side, ties = _tie_policies(client, a, b, ns, policy, evidence)
        names = ", ".join(f"{ns}/{p}" for p in policy.split(","))
        return Finding(
            "POLICY_DROP",
            f"{side}{names} dropped {_n(dropped)} packets {direction_text} ({rule_text}, NETFILTER_DROP)",
            evidence + ties,
        )
    return Finding(
        "POLICY_DROP",
        f"netfilter rule {labels['table']} {labels['chain']} "
        f"dropped {_n(dropped)} packets {direction_text} ({rule_text}, NETFILTER_DROP)",
        evidence,
    )


def calico_interface(pod: cluster.PodInfo) -> str:
    """The host-side interface Calico's CNI plugin names for a pod: ``cali`` and the first 11
    hex digits of the SHA-1 of ``<namespace>.<pod>`` (its endpoint chains are named after it)."""
    digest = hashlib.sha1(f"{pod.namespace}.{pod.name}".encode()).hexdigest()
    return "cali" + digest[:11]


def _tie_policies(client, a, b, namespace: str, policy: str, evidence: list[str]) -> tuple[str, list[str]]:
    """``B's ingress policy `` / ``A's egress policy `` from the NetworkPolicy objects."""
    if client is None:
        return "policy ", []
    ties, side = [], "policy "
    for name in policy.split(","):
        for pod, kind, label in ((b, "Ingress", "B's ingress policy "), (a, "Egress", "A's egress policy ")):
            if pod.namespace != namespace:
                continue
            info = cluster.network_policy(client, namespace, name, pod)
            if info is None:
                ties.append(
                    f"NetworkPolicy {namespace}/{name} does not exist in the API (the "
                    "rule names a Calico policy or one since deleted)"
                )
                break
            if info.selects and kind in info.types:
                side = label
                ties.append(
                    f"NetworkPolicy {namespace}/{name} ({', '.join(info.types)}) selects pod {pod.ref}"
                )
                break
    return side, ties


def _dns_finding(client, r: _Reader, a, b, counts) -> Finding | None:
    names = {b.name}
    if b.hostname:
        names.add(b.hostname)
    if client is not None:
        names.update(cluster.services_of(client, b))
    if r.context == "remote":
        labels = {"destination_namespace": a.namespace, "destination_podname": a.name}
    else:
        labels = {"namespace": a.namespace, "podname": a.name}
    answers = r.delta(ADV + "dns_response_count", labels, ("query", "return_code"))
    mine = {(q, rc): v for (q, rc), v in answers.items() if q.rstrip(".").split(".")[0] in names}
    counts["dns_answers_for_b"] = [
        {"query": q, "return_code": rc, "responses": v} for (q, rc), v in sorted(mine.items())
    ]
    failed = {(q, rc): v for (q, rc), v in mine.items() if rc == "NXDOMAIN"}
    good = {q for (q, rc) in mine if rc == "NOERROR"}
    if not failed or good:
        return None
    queries = sorted({q.rstrip(".") for q, _ in failed})
    total = sum(failed.values())
    right = [f"{s}.{b.namespace}.svc" for s in sorted(names - {b.name, b.hostname})]
    evidence = [f"{q}: NXDOMAIN x{_n(v)}" for (q, _), v in sorted(failed.items())]
    if right:
        evidence.append(f"B is reached as {', '.join(right)} (B's Services in namespace {b.namespace})")
    return Finding(
        "DNS_NXDOMAIN",
        f"A's lookups of {', '.join(queries)} fail with NXDOMAIN ({_n(total)} answers)",
        evidence,
    )
