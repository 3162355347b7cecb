"""The PromQL inside a dashboard, ready to send to Prometheus without Grafana.

Grafana fills in variables before it queries; ``substitute`` does the same with fixed values:
every dashboard variable becomes ``.*`` (the "All" value) unless given, ``$__rate_interval``
becomes ``1m``, ``$__interval`` ``15s`` and ``$__range`` ``1h``.  Used by the tests that run every
panel against a live Prometheus and by ``scripts/render_dashboards.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from retina_dashboards.common import EMPTY_WHEN_HEALTHY, NEEDS_POD_LEVEL, NEEDS_REMOTE_CONTEXT

GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel_id: int
    panel_type: str
    title: str
    description: str
    ref: str
    expr: str
    legend: str
    instant: bool
    fmt: str

    @property
    def pod_level(self) -> bool:
        return NEEDS_POD_LEVEL in self.description

    @property
    def remote_context(self) -> bool:
        return NEEDS_REMOTE_CONTEXT in self.description

    @property
    def empty_when_healthy(self) -> bool:
        return EMPTY_WHEN_HEALTHY in self.description

    @property
    def name(self) -> str:
        return f"{self.dashboard} #{self.panel_id} {self.title!r} {self.ref}"


def panels(model: dict) -> Iterator[dict]:
    """Every panel that is not a row, including panels nested in collapsed rows."""
    for panel in model.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def panel_queries(model: dict) -> list[PanelQuery]:
    found = []
    for panel in panels(model):
        for target in panel.get("targets", []):
            found.append(
                PanelQuery(
                    dashboard=model["uid"],
                    panel_id=panel["id"],
                    panel_type=panel["type"],
                    title=panel.get("title", ""),
                    description=panel.get("description", ""),
                    ref=target.get("refId", ""),
                    expr=target["expr"],
                    legend=target.get("legendFormat", ""),
                    instant=bool(target.get("instant")),
                    fmt=target.get("format", "time_series"),
                )
            )
    return found


def variables_used(text: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in _VARIABLE.finditer(text)}


def substitute(expr: str, values: Mapping[str, str] | None = None) -> str:
    """Replace Grafana variables: built-ins by fixed intervals, the others by ``values`` or ``.*``."""
    values = {**GRAFANA_BUILTINS, **(values or {})}

    def one(match: re.Match) -> str:
        name = next(g for g in match.groups() if g)
        return values.get(name, ".*")

    return _VARIABLE.sub(one, expr)


_LABEL_VALUES = re.compile(r"^label_values\((?:(.+),\s*)?(\w+)\)$")


def variable_selector(variable: dict) -> tuple[str, str] | None:
    """``(series selector, label)`` of a ``label_values(selector, label)`` query variable."""
    if variable.get("type") != "query":
        return None
    query = variable["query"]
    text = query["query"] if isinstance(query, dict) else query
    match = _LABEL_VALUES.match(text.strip())
    if match is None:
        raise ValueError(f"variable {variable['name']}: not a label_values(...) query: {text!r}")
    return match[1] or "", match[2]
