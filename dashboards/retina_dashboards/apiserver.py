"""Retina / API server latency: how long the node waits for the Kubernetes API server.

``adv_node_apiserver_latency`` and ``adv_node_apiserver_tcp_handshake_latency`` are histograms
in milliseconds (Retina's linear buckets 0.5 ms to 63.5 ms); ``adv_node_apiserver_no_response``
counts requests that got no answer in time.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import timeseries

from retina_dashboards.common import (
    ADV,
    EMPTY_WHEN_HEALTHY,
    NEEDS_POD_LEVEL,
    buckets,
    cluster_variable,
    datasource_variable,
    describe,
    heatmap_panel,
    node_variable,
    quantile,
    query,
    rate,
    rate_panel,
    stat_panel,
    timeseries_panel,
)
from retina_dashboards.common import dashboard as make_dashboard

UID = "retina-apiserver"
TITLE = "Retina / API server latency"

LATENCY = ADV + "node_apiserver_latency_bucket"
HANDSHAKE = ADV + "node_apiserver_tcp_handshake_latency_bucket"
NO_RESPONSE = ADV + "node_apiserver_no_response"


def _pod(text: str, *more: str) -> str:
    return describe(text, NEEDS_POD_LEVEL, *more)


def _percentiles_by_node(title: str, text: str, bucket: str) -> timeseries.Panel:
    """p50 and p99 of a histogram, one pair of series per node."""
    targets = [
        query(quantile(0.5, bucket, "instance, le"), "{{instance}} p50"),
        query(quantile(0.99, bucket, "instance, le"), "{{instance}} p99"),
    ]
    return timeseries_panel(title, _pod(text), targets, unit="ms")


def build() -> dict:
    summary = [
        stat_panel(
            "p50 latency",
            _pod("Median time from request to first response byte."),
            query(quantile(0.5, LATENCY)),
            unit="ms",
        ),
        stat_panel(
            "p99 latency",
            _pod("99th percentile; 63.5 ms means at or above the largest bucket."),
            query(quantile(0.99, LATENCY)),
            unit="ms",
        ),
        stat_panel(
            "p99 TCP handshake",
            _pod("SYN to SYN-ACK, measured in the kernel."),
            query(quantile(0.99, HANDSHAKE)),
            unit="ms",
        ),
        stat_panel(
            "Requests without response/s",
            _pod("Requests the API server did not answer in time.", EMPTY_WHEN_HEALTHY),
            query(f"sum({rate(NO_RESPONSE)})"),
            unit="reqps",
        ),
    ]
    latency = [
        _percentiles_by_node("Latency percentiles by node", "Request to first response byte.", LATENCY),
        heatmap_panel(
            "Latency distribution",
            _pod("Requests per latency bucket."),
            buckets(LATENCY),
            unit="ms",
        ),
        _percentiles_by_node("TCP handshake percentiles by node", "SYN to SYN-ACK.", HANDSHAKE),
        rate_panel(
            "Requests without response/s by node",
            _pod("Requests the API server did not answer in time.", EMPTY_WHEN_HEALTHY),
            NO_RESPONSE,
            "instance",
            unit="reqps",
        ),
    ]
    return make_dashboard(
        UID,
        TITLE,
        "Latency from each node to the Kubernetes API server, seen by the agent.",
        [
            datasource_variable(),
            cluster_variable(ADV + "node_apiserver_latency_count"),
            node_variable(ADV + "node_apiserver_latency_count"),
        ],
        [("Summary", summary), ("Latency", latency)],
    )
