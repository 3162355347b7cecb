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
    stat_panel,
    table_panel,
    timeseries_panel,
)
from retina_dashboards.common import dashboard as make_dashboard

UID = "retina-pod-traffic"
TITLE = "Retina / Pod traffic"

FWD, FWD_BYTES = ADV + "forward_count", ADV + "forward_bytes"
DROP, DROP_BYTES = ADV + "drop_count", ADV + "drop_bytes"
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
    pod_legend = "{{namespace}}/{{podname}}"
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
            query(f"sum({rate(ADV + 'tcpretrans_count', POD)})"),
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
        timeseries_panel(
            "Egress bytes/s by pod",
            _pod("Bytes the pods sent."),
            [query(f"topk(10, sum by (namespace, podname) ({rate(FWD_BYTES, EGRESS)}))", pod_legend)],
            unit="Bps",
        ),
        timeseries_panel(
            "Ingress bytes/s by pod",
            _pod("Bytes the pods received."),
            [query(f"topk(10, sum by (namespace, podname) ({rate(FWD_BYTES, INGRESS)}))", pod_legend)],
            unit="Bps",
        ),
        timeseries_panel(
            "Packets/s by workload",
            _pod("Packets by owning workload and direction."),
            [
                query(
                    "topk(10, sum by (namespace, workload_kind, workload_name, "
                    f"direction) ({rate(FWD, POD)}))",
                    "{{namespace}}/{{workload_kind}}/{{workload_name}} {{direction}}",
                )
            ],
            unit="pps",
            width=24,
        ),
    ]
    drops = [
        timeseries_panel(
            "Drops/s by pod and reason",
            _pod("Dropped packets carrying the pod's address, by kernel reason."),
            [query(f"sum by (namespace, podname, reason) ({rate(DROP, POD)})", pod_legend + " {{reason}}")],
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
        timeseries_panel(
            "TCP flags/s",
            _pod(
                "TCP segments by flag: many RST or SYN without "
                "SYNACK point at refused or unanswered connections."
            ),
            [query(f"sum by (flag) ({rate(ADV + 'tcpflags_count', POD)})", "{{flag}}")],
            unit="pps",
        ),
        timeseries_panel(
            "TCP resets/s by pod",
            _pod("RST segments by pod."),
            [query(f"sum by (namespace, podname) ({rate(ADV + 'tcpflags_count', RST)})", pod_legend)],
            unit="pps",
        ),
        timeseries_panel(
            "TCP retransmissions/s by pod",
            _pod("Retransmitted segments by pod."),
            [query(f"sum by (namespace, podname) ({rate(ADV + 'tcpretrans_count', POD)})", pod_legend)],
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
        timeseries_panel(
            "Drops/s between workloads",
            _remote("Dropped packets by source and destination workload and reason."),
            [
                query(
                    "sum by (source_namespace, source_workload_name, "
                    "destination_namespace, destination_workload_name, reason) "
                    f"({rate(DROP, REMOTE)})",
                    "{{source_namespace}}/{{source_workload_name}} -> "
                    "{{destination_namespace}}/{{destination_workload_name}} "
                    "{{reason}}",
                )
            ],
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
