"""Retina / Cluster and Node overview: traffic, drops, TCP, interfaces, agent health."""

from __future__ import annotations

from retina_dashboards.common import (
    BASIC,
    CONTROL,
    EMPTY_WHEN_HEALTHY,
    NEEDS_POD_LEVEL,
    NODE,
    TABLE,
    cluster_variable,
    datasource_variable,
    describe,
    node_variable,
    query,
    rate,
    rate_panel,
    stat_panel,
    table_panel,
    timeseries_panel,
)
from retina_dashboards.common import dashboard as make_dashboard

UID = "retina-overview"
TITLE = "Retina / Cluster and Node overview"

# TcpExt counters that mean trouble (the agent exports every TcpExt key; these are the useful ones).
TCP_TROUBLE = (
    "ListenDrops|ListenOverflows|TCPBacklogDrop|TCPTimeouts|TCPLossProbes|"
    "TCPLostRetransmit|TCPAbortOnTimeout|TCPAbortOnData|TCPAbortOnClose"
)


def build() -> dict:
    fwd, fwd_bytes = BASIC + "forward_count", BASIC + "forward_bytes"
    drop, drop_bytes = BASIC + "drop_count", BASIC + "drop_bytes"
    summary = [
        stat_panel(
            "Forwarded packets/s",
            "Packets into and out of the selected nodes' ports.",
            query(f"sum({rate(fwd)})"),
            unit="pps",
        ),
        stat_panel(
            "Dropped packets/s",
            "Packets the kernel dropped on the selected nodes.",
            query(f"sum({rate(drop)})"),
            unit="pps",
        ),
        stat_panel(
            "Established TCP sockets",
            "TCP sockets in ESTABLISHED on the selected nodes.",
            query(f'sum({BASIC}tcp_state{{{NODE}, state="ESTABLISHED"}})'),
        ),
        stat_panel(
            "Plugins running",
            "Agent plugins in state running, summed over nodes.",
            query(f'sum({CONTROL}plugin_status{{{NODE}, state="running"}})'),
        ),
    ]
    traffic = [
        rate_panel(
            "Packets/s by node and direction",
            "networkobservability_forward_count: ingress and egress packets.",
            fwd,
            "instance, direction",
            unit="pps",
        ),
        rate_panel(
            "Bytes/s by node and direction",
            "networkobservability_forward_bytes: ingress and egress bytes.",
            fwd_bytes,
            "instance, direction",
            unit="Bps",
        ),
    ]
    drops = [
        rate_panel(
            "Drops/s by reason",
            "Kernel drop reasons (NETFILTER_DROP is an iptables/nftables DROP, "
            "NO_SOCKET a closed port, ...).",
            drop,
            "reason",
            unit="pps",
        ),
        rate_panel(
            "Dropped bytes/s by node and reason",
            "networkobservability_drop_bytes.",
            drop_bytes,
            "instance, reason",
            unit="Bps",
        ),
        table_panel(
            "Drops by node and reason in the time range",
            "Packets dropped during the selected time range, largest first.",
            query(
                f"sum by (instance, reason) (increase({drop}{{{NODE}}}[$__range]))", instant=True, fmt=TABLE
            ),
            width=24,
            height=7,
        ),
    ]
    tcp = [
        timeseries_panel(
            "TCP sockets by state",
            "networkobservability_tcp_state.",
            [query(f"sum by (state) ({BASIC}tcp_state{{{NODE}}})", "{{state}}")],
        ),
        rate_panel(
            "TCP retransmissions/s by node",
            "Retransmitted segments (tcp_retransmit_skb tracepoint).",
            BASIC + "tcpretrans_count",
            "instance",
            unit="pps",
        ),
        rate_panel(
            "TCP trouble counters/s",
            "TcpExt counters that point at problems: listen queue overflows, "
            "backlog drops, timeouts, loss probes, aborts.",
            BASIC + "tcp_connection_stats",
            "statistic_name",
            f'{NODE}, statistic_name=~"{TCP_TROUBLE}"',
        ),
        timeseries_panel(
            "Open UDP sockets by node",
            "networkobservability_udp_connection_stats.",
            [
                query(
                    f'sum by (instance) ({BASIC}udp_connection_stats{{{NODE}, statistic_name="ACTIVE"}})',
                    "{{instance}}",
                )
            ],
        ),
    ]
    interfaces = [
        rate_panel(
            "Interface errors and drops/s (top 10)",
            "Per-interface error and drop counters (all_interfaces excluded).",
            BASIC + "interface_stats",
            "instance, interface_name, statistic_name",
            f'{NODE}, interface_name!="all_interfaces"',
            top=10,
        ),
        rate_panel(
            "IP error counters/s",
            "IpExt counters: checksum errors, no route, truncated packets.",
            BASIC + "ip_connection_stats",
            "statistic_name",
            f'{NODE}, statistic_name=~"InCsumErrors|InNoRoutes|InTruncatedPkts"',
        ),
        table_panel(
            "Interface error and drop counters",
            "Current counter values per node and interface, largest first.",
            query(
                "topk(20, sum by (instance, interface_name, statistic_name) "
                f'({BASIC}interface_stats{{{NODE}, interface_name!="all_interfaces"}}))',
                instant=True,
                fmt=TABLE,
            ),
            width=24,
            height=7,
        ),
    ]
    health = [
        table_panel(
            "Plugin status",
            "One row per node and plugin; the reason says why a plugin is not running.",
            query(f"{CONTROL}plugin_status{{{NODE}}} == 1", instant=True, fmt=TABLE),
            width=12,
            height=8,
        ),
        timeseries_panel(
            "Plugins not running",
            describe("Plugins in state unavailable or stopped.", EMPTY_WHEN_HEALTHY),
            [
                query(
                    f"sum by (instance, plugin, state) ({CONTROL}plugin_status"
                    f'{{{NODE}, state=~"unavailable|stopped"}} == 1)',
                    "{{instance}} {{plugin}} {{state}}",
                )
            ],
            width=12,
        ),
        rate_panel(
            "Lost events/s",
            describe("Events the kernel could not hand to the agent (full buffers).", EMPTY_WHEN_HEALTHY),
            CONTROL + "lost_events_counter",
            "instance, type, reason",
            width=8,
        ),
        rate_panel(
            "Harvest failures/s",
            describe("Failed reads of a plugin's kernel maps.", EMPTY_WHEN_HEALTHY),
            CONTROL + "harvest_failures_total",
            "instance, plugin",
            width=8,
        ),
        rate_panel(
            "Pod-level series dropped at the cap/s",
            describe(
                "New adv_* series refused because the series cap was reached.",
                NEEDS_POD_LEVEL,
                EMPTY_WHEN_HEALTHY,
            ),
            CONTROL + "series_overflow_total",
            "instance",
            width=8,
        ),
    ]
    return make_dashboard(
        UID,
        TITLE,
        "Node-level network metrics of the Retina-compatible agent on every node.",
        [
            datasource_variable(),
            cluster_variable(BASIC + "forward_count"),
            node_variable(BASIC + "forward_count"),
        ],
        [
            ("Summary", summary),
            ("Traffic", traffic),
            ("Drops", drops),
            ("TCP", tcp),
            ("Interfaces", interfaces),
            ("Agent health", health),
        ],
    )
