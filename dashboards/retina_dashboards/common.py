"""Shared building blocks: the datasource, the variables, one factory per panel type.

Every panel reads from the ``$datasource`` variable, and every query filters on ``$cluster``
and ``$node`` (the ``instance`` label the scrape config sets to the node name).  ``$cluster``
comes from a ``cluster`` label that a multi-cluster Prometheus adds as an external label or in
relabeling; when the label is absent the variable offers only "All" (``.*``), and
``cluster=~".*"`` also matches series that have no ``cluster`` label, so nothing disappears.

Panel descriptions carry fixed sentences that say when a panel is expected to be empty
(tests read them):

* ``NEEDS_POD_LEVEL``: the panel reads ``adv_*`` series, emitted only with ``enablePodLevel``.
* ``NEEDS_REMOTE_CONTEXT``: the panel reads ``source_*``/``destination_*`` labels.
* ``EMPTY_WHEN_HEALTHY``: the panel shows problems (lost events, plugin failures); no series
  is the good state.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, nodegraph, stat, table, timeseries
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm
from grafana_foundation_sdk.models import prometheus as pm

NEEDS_POD_LEVEL = "Needs pod-level metrics (agent config enablePodLevel: true)."
NEEDS_REMOTE_CONTEXT = "Needs remote context (agent config remoteContext: true)."
EMPTY_WHEN_HEALTHY = "Empty on a healthy node."

#: Every panel and query variable reads from the datasource the user picks.
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")

#: Label matchers every node-level query carries.
NODE = 'cluster=~"$cluster", instance=~"$node"'
#: ... and every pod-level query with local context (pods on the node) carries.
POD = NODE + ', namespace=~"$namespace", podname=~"$pod"'

BASIC = "networkobservability_"
ADV = "networkobservability_adv_"
CONTROL = "controlplane_networkobservability_"


# -- variables --------------------------------------------------------------------------------
def datasource_variable() -> db.DatasourceVariable:
    return db.DatasourceVariable("datasource").label("Data source").type("prometheus")


def label_variable(
    name: str,
    label: str,
    metric: str,
    matchers: str = "",
) -> db.QueryVariable:
    """A multi-select variable over the values of ``label`` on ``metric``, with "All" = ``.*``."""
    selector = f"{metric}{{{matchers}}}" if matchers else metric
    return (
        db.QueryVariable(name)
        .label(name.capitalize())
        .datasource(DATASOURCE)
        .query({"query": f"label_values({selector}, {label})", "refId": f"{name}-values"})
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dm.VariableOption(selected=True, text="All", value="$__all"))
    )


def cluster_variable(metric: str) -> db.QueryVariable:
    return label_variable("cluster", "cluster", metric).description(
        "Values of a cluster label, if your Prometheus adds one; All matches series without it."
    )


def node_variable(metric: str) -> db.QueryVariable:
    return label_variable("node", "instance", metric, 'cluster=~"$cluster"').description(
        "Node name (the scrape config sets instance to the node name)."
    )


def namespace_variable(metric: str) -> db.QueryVariable:
    return label_variable("namespace", "namespace", metric, NODE)


def pod_variable(metric: str) -> db.QueryVariable:
    return label_variable("pod", "podname", metric, NODE + ', namespace=~"$namespace"')


# -- queries ----------------------------------------------------------------------------------
TABLE = pm.PromQueryFormat.TABLE
HEATMAP = pm.PromQueryFormat.HEATMAP


def rate(metric: str, matchers: str = NODE, window: str = "$__rate_interval") -> str:
    """``rate(metric{matchers}[window])``."""
    return f"rate({metric}{{{matchers}}}[{window}])"


def query(
    expr: str,
    legend: str = "",
    *,
    instant: bool = False,
    fmt: pm.PromQueryFormat | None = None,
    ref: str = "A",
) -> prom.Dataquery:
    q = prom.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend:
        q = q.legend_format(legend)
    if instant:
        q = q.instant()
    if fmt is not None:
        q = q.format(fmt)
    return q


def sum_rate(metric: str, by: str, matchers: str = NODE, *, top: int | None = None) -> str:
    """``sum by (by) (rate(metric{matchers}[$__rate_interval]))``: a counter's per-second rate for
    each value of the ``by`` labels; with ``top``, only the ``top`` largest series (``topk``)."""
    expr = f"sum by ({by}) ({rate(metric, matchers)})"
    return f"topk({top}, {expr})" if top else expr


def series_legend(by: str) -> str:
    """The legend that names a series by its ``by`` labels: ``"instance, reason"`` ->
    ``"{{instance}} {{reason}}"``."""
    return " ".join("{{" + label.strip() + "}}" for label in by.split(","))


def quantile(q: float, bucket: str, by: str = "le", matchers: str = NODE) -> str:
    """The ``q`` quantile of a histogram's ``_bucket`` series, per value of the ``by`` labels
    (which must include ``le``)."""
    return f"histogram_quantile({q}, sum by ({by}) ({rate(bucket, matchers)}))"


def buckets(bucket: str, matchers: str = NODE) -> prom.Dataquery:
    """A histogram's observations per bucket in each interval, as a heatmap reads them."""
    return query(f"sum by (le) (increase({bucket}{{{matchers}}}[$__rate_interval]))", "{{le}}", fmt=HEATMAP)


def describe(text: str, *markers: str) -> str:
    return " ".join([text, *markers])


def _common(
    panel: Builder, title: str, description: str, targets: Sequence[prom.Dataquery], width: int, height: int
) -> Builder:
    panel = panel.title(title).description(description).datasource(DATASOURCE)
    panel = panel.span(width).height(height)
    for ref, target in zip("ABCDEFGH", targets, strict=False):
        panel = panel.with_target(target.ref_id(ref))
    return panel


# -- panels -----------------------------------------------------------------------------------
def timeseries_panel(
    title: str,
    description: str,
    targets: Sequence[prom.Dataquery],
    unit: str = "short",
    width: int = 12,
    height: int = 8,
    stacked: bool = False,
) -> timeseries.Panel:
    panel = timeseries.Panel().unit(unit).fill_opacity(10).line_width(1)
    panel = panel.legend(
        cb.VizLegendOptions()
        .display_mode(cm.LegendDisplayMode.TABLE)
        .placement(cm.LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(["mean", "max", "lastNotNull"])
    )
    panel = panel.tooltip(
        cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)
    )
    if stacked:
        panel = panel.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
    return _common(panel, title, description, targets, width, height)


def rate_panel(
    title: str,
    description: str,
    metric: str,
    by: str,
    matchers: str = NODE,
    *,
    legend: str | None = None,
    top: int | None = None,
    unit: str = "short",
    width: int = 12,
    stacked: bool = False,
) -> timeseries.Panel:
    """A time series of a counter's rate split by the ``by`` labels (:func:`sum_rate`), each
    series named by those labels unless ``legend`` says otherwise."""
    target = query(sum_rate(metric, by, matchers, top=top), legend or series_legend(by))
    return timeseries_panel(title, description, [target], unit=unit, width=width, stacked=stacked)


def stat_panel(
    title: str, description: str, target: prom.Dataquery, unit: str = "short", width: int = 6, height: int = 4
) -> stat.Panel:
    panel = (
        stat.Panel()
        .unit(unit)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(cm.BigValueGraphMode.AREA)
        .color_mode(cm.BigValueColorMode.VALUE)
    )
    return _common(panel, title, description, [target], width, height)


def table_panel(
    title: str,
    description: str,
    target: prom.Dataquery,
    unit: str = "short",
    width: int = 12,
    height: int = 8,
) -> table.Panel:
    """An instant query shown as a table, the Time column hidden, largest value first."""
    panel = (
        table.Panel()
        .unit(unit)
        .show_header(True)
        .sort_by([cb.TableSortByFieldState().display_name("Value").desc(True)])
        .with_transformation(
            dm.DataTransformerConfig(id_val="organize", options={"excludeByName": {"Time": True}})
        )
    )
    return _common(panel, title, description, [target], width, height)


def heatmap_panel(
    title: str, description: str, target: prom.Dataquery, unit: str = "s", width: int = 12, height: int = 8
) -> heatmap.Panel:
    """Prometheus histogram buckets (``format: heatmap``) drawn as they are (no recalculation)."""
    panel = (
        heatmap.Panel()
        .calculate(False)
        .y_axis(heatmap.YAxisConfig().unit(unit))
        .color(heatmap.HeatmapColorOptions().mode(hm.HeatmapColorMode.SCHEME).scheme("Oranges").steps(64))
        .cell_values(heatmap.CellValues().unit("short"))
    )
    return _common(panel, title, description, [target], width, height)


def node_graph_panel(
    title: str,
    description: str,
    nodes: prom.Dataquery,
    edges: prom.Dataquery,
    unit: str = "Bps",
    width: int = 24,
    height: int = 12,
) -> nodegraph.Panel:
    """Grafana's node graph from two instant table queries: ``nodes`` (refId ``nodes``) returns
    an ``id`` label per node, ``edges`` (refId ``edges``) ``id``, ``source`` and ``target``
    labels per edge; their values become each frame's ``mainstat`` (the panel tells node and
    edge frames apart by the ``source`` field)."""
    panel = (
        nodegraph.Panel()
        .nodes(nodegraph.NodeOptions().main_stat_unit(unit))
        .edges(nodegraph.EdgeOptions().main_stat_unit(unit))
        .with_transformation(
            dm.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True},
                    "renameByName": {"Value #nodes": "mainstat", "Value #edges": "mainstat"},
                },
            )
        )
    )
    panel = panel.title(title).description(description).datasource(DATASOURCE)
    panel = panel.span(width).height(height)
    return panel.with_target(nodes.ref_id("nodes")).with_target(edges.ref_id("edges"))


# -- dashboards -------------------------------------------------------------------------------
def dashboard(
    uid: str,
    title: str,
    description: str,
    variables: Sequence[Builder],
    rows: Sequence[tuple[str, Sequence[Builder]]],
) -> dict:
    """Lay out ``rows`` of panels top to bottom, number them, return the Grafana JSON model."""
    board = (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["retina", "networking", "ebpf"])
        .timezone("browser")
        .editable()
        .refresh("30s")
        .time("now-1h", "now")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
    )
    for variable in variables:
        board = board.with_variable(variable)
    panel_id = 0
    for row_title, panels in rows:
        panel_id += 1
        board = board.with_row(db.Row(row_title).id(panel_id))
        for panel in panels:
            panel_id += 1
            board = board.with_panel(panel.id(panel_id))
    model = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    model["schemaVersion"] = 39  # Grafana 10.4 reads the SDK's 10.1 model unchanged
    model.pop("style", None)  # removed from the dashboard schema in Grafana 10
    for variable in model["templating"]["list"]:
        variable.pop("id", None)  # the SDK writes a zero UUID; Grafana keys variables by name
    return model
