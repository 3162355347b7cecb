"""Retina / DNS: requests, responses by return code, latency, failing queries."""

from __future__ import annotations

from retina_dashboards.common import (
    ADV,
    BASIC,
    NEEDS_POD_LEVEL,
    NODE,
    POD,
    TABLE,
    buckets,
    cluster_variable,
    datasource_variable,
    describe,
    heatmap_panel,
    namespace_variable,
    node_variable,
    pod_variable,
    quantile,
    query,
    rate,
    rate_panel,
    stat_panel,
    sum_rate,
    table_panel,
    timeseries_panel,
)
from retina_dashboards.common import dashboard as make_dashboard

UID = "retina-dns"
TITLE = "Retina / DNS"

RESPONSES = BASIC + "dns_responses_total"
LATENCY = BASIC + "dns_latency_seconds_bucket"
NOT_NOERROR = 'rcode!="NOERROR"'


def build() -> dict:
    error_ratio = f"(sum({rate(RESPONSES, NODE + ', ' + NOT_NOERROR)}) or vector(0)) / sum({rate(RESPONSES)})"
    summary = [
        stat_panel(
            "Requests/s",
            "DNS requests seen on the selected nodes.",
            query(f"sum({rate(BASIC + 'dns_request_count')})"),
            unit="reqps",
        ),
        stat_panel(
            "Responses/s",
            "DNS responses seen on the selected nodes.",
            query(f"sum({rate(BASIC + 'dns_response_count')})"),
            unit="reqps",
        ),
        stat_panel(
            "Error ratio",
            "Share of responses whose return code is not NOERROR.",
            query(error_ratio),
            unit="percentunit",
        ),
        stat_panel(
            "p99 latency",
            "99th percentile of request-to-response time.",
            query(quantile(0.99, LATENCY)),
            unit="s",
        ),
    ]
    traffic = [
        timeseries_panel(
            "Requests and responses/s by node",
            "Node-level DNS counters.",
            [
                query(sum_rate(BASIC + "dns_request_count", "instance"), "{{instance}} requests"),
                query(sum_rate(BASIC + "dns_response_count", "instance"), "{{instance}} responses"),
            ],
            unit="reqps",
        ),
        rate_panel(
            "Responses/s by return code",
            "NXDOMAIN: the name does not exist; SERVFAIL: the server failed.",
            RESPONSES,
            "rcode",
            unit="reqps",
            stacked=True,
        ),
        rate_panel("Responses/s by query type", "A, AAAA, SRV, PTR, ...", RESPONSES, "qtype", unit="reqps"),
        timeseries_panel(
            "Error ratio by node",
            "Non-NOERROR responses / all responses.",
            [
                query(
                    f"(sum by (instance) ({rate(RESPONSES, NODE + ', ' + NOT_NOERROR)})"
                    f" or sum by (instance) ({rate(RESPONSES)}) * 0)"
                    f" / sum by (instance) ({rate(RESPONSES)})",
                    "{{instance}}",
                )
            ],
            unit="percentunit",
        ),
    ]
    latency = [
        timeseries_panel(
            "Latency percentiles",
            "Request-to-response time measured in the kernel.",
            [
                query(quantile(0.5, LATENCY), "p50"),
                query(quantile(0.9, LATENCY), "p90"),
                query(quantile(0.99, LATENCY), "p99"),
            ],
            unit="s",
        ),
        heatmap_panel(
            "Latency distribution",
            "Responses per latency bucket (networkobservability_dns_latency_seconds).",
            buckets(LATENCY),
        ),
    ]
    adv_response = ADV + "dns_response_count"
    pods = [
        table_panel(
            "Top failing queries",
            describe(
                "Queries answered with a return code other than NOERROR in the time range, by pod.",
                NEEDS_POD_LEVEL,
            ),
            query(
                "topk(10, sum by (namespace, podname, query, query_type, return_code) "
                f'(increase({adv_response}{{{POD}, return_code!~"(?i)noerror"}}'
                "[$__range])))",
                instant=True,
                fmt=TABLE,
            ),
            width=12,
        ),
        table_panel(
            "Top queried names",
            describe("Most frequent queries in the time range, by pod.", NEEDS_POD_LEVEL),
            query(
                "topk(10, sum by (namespace, podname, query, query_type) "
                f"(increase({ADV}dns_request_count{{{POD}}}[$__range])))",
                instant=True,
                fmt=TABLE,
            ),
            width=12,
        ),
    ]
    return make_dashboard(
        UID,
        TITLE,
        "DNS requests, responses, return codes and latency seen by the agent.",
        [
            datasource_variable(),
            cluster_variable(BASIC + "dns_request_count"),
            node_variable(BASIC + "dns_request_count"),
            namespace_variable(ADV + "dns_request_count"),
            pod_variable(ADV + "dns_request_count"),
        ],
        [
            ("Summary", summary),
            ("Requests and responses", traffic),
            ("Latency", latency),
            ("Queries by pod", pods),
        ],
    )
