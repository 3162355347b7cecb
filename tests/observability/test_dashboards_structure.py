"""The dashboards' JSON is well formed for Grafana 10: ids, datasources, variables, layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retina_dashboards import build
from retina_dashboards.queries import panel_queries, panels, variable_selector, variables_used

FILES = sorted(build.DEFAULT_DIR.glob("*.json"))
GRAFANA_VARIABLES = {"__rate_interval", "__interval", "__range", "__all"}
PANEL_TYPES = {"row", "timeseries", "stat", "table", "heatmap", "nodeGraph"}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_the_role_folder_holds_exactly_the_built_dashboards():
    assert [p.stem for p in FILES] == sorted(build.DASHBOARDS)


def test_committed_json_is_what_the_code_builds(tmp_path):
    assert build.main(["--check"]) == 0, "run: python -m retina_dashboards.build"


def test_uids_and_titles_are_stable_and_unique():
    models = [load(p) for p in FILES]
    assert sorted(m["uid"] for m in models) == sorted(
        ["retina-overview", "retina-dns", "retina-pod-traffic", "retina-apiserver"]
    )
    assert len({m["title"] for m in models}) == len(models)
    assert all(m["title"].startswith("Retina / ") for m in models)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_dashboard_structure(path):
    model = load(path)
    every_panel = model["panels"] + [p for r in model["panels"] for p in r.get("panels", [])]

    ids = [p["id"] for p in every_panel]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    assert all(isinstance(i, int) and i > 0 for i in ids)
    assert {p["type"] for p in every_panel} <= PANEL_TYPES

    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("cluster", "node"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*", name
        assert variable_selector(variables[name])[1] == {"cluster": "cluster", "node": "instance"}[name]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}

    used: set[str] = set()
    for panel in panels(model):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert panel.get("description"), f"panel {panel['title']!r} has no description"
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"]) == panel["datasource"]
        used |= variables_used(json.dumps(panel))
    for variable in variables.values():
        used |= variables_used(json.dumps(variable.get("query", "")))
    undefined = used - set(variables) - GRAFANA_VARIABLES
    assert not undefined, f"variables used but not defined: {undefined}"

    cells: dict[tuple[int, int], str] = {}
    for panel in every_panel:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_panel_kinds_fit_their_queries(path):
    for q in panel_queries(load(path)):
        if q.panel_type == "table":
            assert q.instant and q.fmt == "table", q.name
        if q.panel_type == "nodeGraph":  # nodes: an id per node; edges: id, source, target
            assert q.instant and q.fmt == "table" and q.ref in ("nodes", "edges"), q.name
            labels = ('"id"', '"source"', '"target"') if q.ref == "edges" else ('"id"',)
            assert all("label_join(" in q.expr and label in q.expr for label in labels), q.name
        if q.panel_type == "heatmap":
            assert q.fmt == "heatmap" and "_bucket" in q.expr, q.name
        if q.remote_context:
            assert q.pod_level, q.name
        if "networkobservability_adv_" in q.expr:
            assert q.pod_level, f"{q.name} reads adv_* metrics but does not say so"
