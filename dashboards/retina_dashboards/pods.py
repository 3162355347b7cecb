"""Retina / Pod traffic: top talkers, flows between workloads, drops by pod, TCP flags.

Every panel reads the pod-level ``adv_*`` metrics.  The upper rows use the local context labels
(``namespace``, ``podname``, ``workload_kind``, ``workload_name``: the pod on this node); the
"Between workloads" row needs the remote context (``source_*`` and ``destination_*`` labels).
"""

from __future__ import annotations

from retina_dashboards.common import (
    ADV,
    NEEDS_POD_LEVEL,
    NEEDS_REMOTE_CONTEXT,
    NODE,
    POD,
    TABLE,
    cluster_variable,
    datasource_variable,
    describe,
    namespace_variable,
    node_graph_panel,
    node_variable,
    pod_variable,
    query,
    rate,
    rate_panel,
    stat_panel,
    table_panel,
)
from retina_dashboards.common import dashboard as make_dashboard

UID = "retina-pod-traffic"
TITLE = "Retina / Pod traffic"

FWD, FWD_BYTES = ADV + "forward_count", ADV + "forward_bytes"
DROP, DROP_BYTES = ADV + "drop_count", ADV + "drop_bytes"
TCP_FLAGS, RETRANS = ADV + "tcpflags_count", ADV + "tcpretrans_count"
#: Series per pod, named namespace/pod.
BY_POD, POD_LEGEND = "namespace, podname", "{{namespace}}/{{podname}}"
#: Remote context: series that name both workloads; the namespace variable filters the source.
REMOTE = NODE + ', source_namespace=~"$namespace", source_workload_name!="", destination_workload_name!=""'
EGRESS = POD + ', direction="egress"'
INGRESS = POD + ', direction="ingress"'
RST = POD + ', flag="RST"'
WORKLOAD_PAIR = (
    "source_namespace, source_workload_kind, source_workload_name, "
    "destination_namespace, destination_workload_kind, destination_workload_name"
)


def _pod(text: str) -> str:
    return describe(text, NEEDS_POD_LEVEL)


def _remote(text: str) -> str:
    return describe(text, NEEDS_POD_LEVEL, NEEDS_REMOTE_CONTEXT)


def _workload_id(series: str, label: str, side: str) -> str:
    """``series`` with label ``label`` = ``<side>_namespace/<side>_workload_name``."""
    return f'label_join({series}, "{label}", "/", "{side}_namespace", "{side}_workload_name")'


def service_map_queries() -> tuple[str, str]:
    """(nodes, edges) PromQL of the service map: bytes/s per workload sent and per edge, the
    larger of the two observation points (a packet between two pods of one node is counted
    leaving one and entering the other, each with its own ``direction``)."""
    traffic = rate(FWD_BYTES, REMOTE)
    edges = _workload_id(_workload_id(traffic, "source", "source"), "target", "destination")
    edges = f'label_join({edges}, "id", " -> ", "source", "target")'
    edges = f"max by (id, source, target) (sum by (id, source, target, direction) ({edges}))"
    sent = f"max by (id) (sum by (id, direction) ({_workload_id(traffic, 'id', 'source')}))"
    received = f"max by (id) (sum by (id, direction) ({_workload_id(traffic, 'id', 'destination')}))"
    nodes = f'label_join({sent} or 0 * {received}, "title", "", "id")'
    return nodes, edges


def build() -> dict:
    summary = [
        stat_panel(
            "Pod bytes/s",
            _pod("Bytes sent and received by the selected pods."),
            query(f"sum({rate(FWD_BYTES, POD)})"),
            unit="Bps",
        ),
        stat_panel(
            "Pod packets/s",
            _pod("Packets sent and received by the selected pods."),
            query(f"sum({rate(FWD, POD)})"),
            unit="pps",
        ),
        stat_panel(
            "Pod drops/s",
            _pod("Packets of the selected pods the kernel dropped."),
            query(f"sum({rate(DROP, POD)})"),
            unit="pps",
        ),
        stat_panel(
            "Pod TCP retransmissions/s",
            _pod("Retransmitted segments of the pods."),
            query(f"sum({rate(RETRANS, POD)})"),
            unit="pps",
        ),
    ]
    talkers = [
        table_panel(
            "Top talkers",
            _pod("Pods by bytes/s, per direction (egress: sent)."),
            query(
                "topk(10, sum by (namespace, podname, workload_kind, workload_name, "
                f"direction) ({rate(FWD_BYTES, POD)}))",
                instant=True,
                fmt=TABLE,
            ),
            unit="Bps",
            width=24,
        ),
        rate_panel(
            "Egress bytes/s by pod",
            _pod("Bytes the pods sent."),
            FWD_BYTES,
            BY_POD,
            EGRESS,
            legend=POD_LEGEND,
            top=10,
            unit="Bps",
        ),
        rate_panel(
            "Ingress bytes/s by pod",
            _pod("Bytes the pods received."),
            FWD_BYTES,
            BY_POD,
            INGRESS,
            legend=POD_LEGEND,
            top=10,
            unit="Bps",
        ),
        rate_panel(
            "Packets/s by workload",
            _pod("Packets by owning workload and direction."),
            FWD,
            "namespace, workload_kind, workload_name, direction",
            POD,
            legend="{{namespace}}/{{workload_kind}}/{{workload_name}} {{direction}}",
            top=10,
            unit="pps",
            width=24,
        ),
    ]
    drops = [
        rate_panel(
            "Drops/s by pod and reason",
            _pod("Dropped packets carrying the pod's address, by kernel reason."),
            DROP,
            BY_POD + ", reason",
            POD,
            legend=POD_LEGEND + " {{reason}}",
            unit="pps",
        ),
        table_panel(
            "Drops by pod and reason in the time range",
            _pod("Dropped packets per pod and reason, largest first."),
            query(
                f"sum by (namespace, podname, reason, direction) (increase({DROP}{{{POD}}}[$__range]))",
                instant=True,
                fmt=TABLE,
            ),
        ),
    ]
    tcp = [
        rate_panel(
            "TCP flags/s",
            _pod(
                "TCP segments by flag: many RST or SYN without "
                "SYNACK point at refused or unanswered connections."
            ),
            TCP_FLAGS,
            "flag",
            POD,
            unit="pps",
        ),
        rate_panel(
            "TCP resets/s by pod",
            _pod("RST segments by pod."),
            TCP_FLAGS,
            BY_POD,
            RST,
            legend=POD_LEGEND,
            unit="pps",
        ),
        rate_panel(
            "TCP retransmissions/s by pod",
            _pod("Retransmitted segments by pod."),
            RETRANS,
            BY_POD,
            POD,
            legend=POD_LEGEND,
            unit="pps",
            width=24,
        ),
    ]
    nodes_expr, edges_expr = service_map_queries()
    between = [
        node_graph_panel(
            "Service map",
            _remote(
                "Workloads (namespace/name) and the bytes/s between them; a node's number is what "
                "it sends. Drops between workloads are in the panel below; `kubectl retina map` "
                "draws the same map with drops, DNS errors and retransmissions per edge."
            ),
            query(nodes_expr, instant=True, fmt=TABLE),
            query(edges_expr, instant=True, fmt=TABLE),
        ),
        table_panel(
            "Flows between workloads",
            _remote("Bytes/s from each source workload to each destination workload."),
            query(f"topk(20, sum by ({WORKLOAD_PAIR}) ({rate(FWD_BYTES, REMOTE)}))", instant=True, fmt=TABLE),
            unit="Bps",
            width=24,
        ),
        rate_panel(
            "Drops/s between workloads",
            _remote("Dropped packets by source and destination workload and reason."),
            DROP,
            "source_namespace, source_workload_name, destination_namespace, destination_workload_name, "
            "reason",
            REMOTE,
            legend="{{source_namespace}}/{{source_workload_name}} -> "
            "{{destination_namespace}}/{{destination_workload_name}} {{reason}}",
            unit="pps",
            width=24,
        ),
    ]
    return make_dashboard(
        UID,
        TITLE,
        "Pod-level traffic, drops and TCP health from the agent's adv_* metrics.",
        [
            datasource_variable(),
            cluster_variable(FWD),
            node_variable(FWD),
            namespace_variable(FWD),
            pod_variable(FWD),
        ],
        [
            ("Summary", summary),
            ("Top talkers", talkers),
            ("Drops", drops),
            ("TCP", tcp),
            ("Between workloads", between),
        ],
    )
