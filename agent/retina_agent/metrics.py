"""Metric names and families in Retina's vocabulary.

Retina's node metrics are gauges named ``..._count``/``..._bytes``. Prometheus reserves the
``_count`` suffix for histograms and summaries, so ``promtool check metrics`` rejects a gauge
of that name (and so rejects Retina's own output). We keep Retina's exact names, which is what
dashboards and alerts query, and expose those with a reserved suffix as ``untyped``; every
metric we add has a proper type and a conventional name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.metrics_core import Metric

DATAPLANE = "networkobservability_"
CONTROLPLANE = "controlplane_networkobservability_"
_RESERVED = ("_count", "_sum", "_bucket", "_total", "_created")


def retina_gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> Metric:
    """A Retina gauge by its exact name (untyped when the name ends in a reserved suffix)."""
    full = DATAPLANE + name
    if full.endswith(_RESERVED):
        return UnknownMetricFamily(full, documentation, labels=list(labels))
    return GaugeMetricFamily(full, documentation, labels=list(labels))


def retina_counter(
    name: str, documentation: str, labels: Sequence[str] = (), prefix: str = CONTROLPLANE
) -> Metric:
    """A Retina counter by its exact name (Retina's Go client adds no ``_total``): untyped."""
    return UnknownMetricFamily(prefix + name, documentation, labels=list(labels))


def counter(
    name: str, documentation: str, labels: Sequence[str] = (), prefix: str = DATAPLANE
) -> CounterMetricFamily:
    """A counter we add (exposed as ``<name>_total``)."""
    return CounterMetricFamily(prefix + name, documentation, labels=list(labels))


def gauge(
    name: str, documentation: str, labels: Sequence[str] = (), prefix: str = DATAPLANE
) -> GaugeMetricFamily:
    return GaugeMetricFamily(prefix + name, documentation, labels=list(labels))


def histogram(
    name: str,
    documentation: str,
    buckets: Iterable[tuple[str, float]],
    sum_value: float,
    labels: Sequence[str] = (),
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(DATAPLANE + name, documentation, labels=list(labels))
    family.add_metric([], list(buckets), sum_value)
    return family


def add(family: Metric, labels: Sequence[str], value: float) -> None:
    family.add_metric(list(labels), value)
