#!/usr/bin/env python3
"""Render each Retina dashboard's panels from a live Prometheus into a PNG (no Grafana needed).

    # from a Prometheus that already scrapes agents:
    scripts/render_dashboards.py --prometheus http://127.0.0.1:9090
    # or start everything in the lab (root): a node with pods, the agent, Prometheus and a
    # mixed workload (traffic, drops, DNS with NXDOMAIN, retransmissions), for 5 minutes:
    scripts/render_dashboards.py --lab 300
    # the same with the pod-level agent (packetparser, latency) naming the pods from a
    # Kubernetes API emulator, so that the pod and API-server dashboards have data too:
    scripts/render_dashboards.py --lab 300 --pod-level

The layout follows each panel's gridPos; timeseries are drawn from range queries over the last
``--minutes``, stat panels and tables from instant queries, heatmaps from histogram buckets.
Variables are set to "All".  Output: ``docs/dashboards/<dashboard>.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab"))  # the test lab (not installed)

from retina_dashboards import (  # noqa: E402
    EMPTY_WHEN_HEALTHY,
    NEEDS_POD_LEVEL,
    NEEDS_REMOTE_CONTEXT,
    build,
)
from retina_dashboards.queries import panels, substitute  # noqa: E402
from retina_lab import LabNode  # noqa: E402
from retina_lab.agent import AgentProcess, our_tc_filters, wait_for  # noqa: E402
from retina_lab.kube import KubeEmulator  # noqa: E402
from retina_lab.prometheus import PrometheusServer  # noqa: E402
from retina_lab.workload import API_SERVER, LabWorkload, lab_cluster_objects  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "dashboards"
RULES = REPO / "deploy" / "prometheus" / "retina-alerts.rules.yml"
CRD = REPO / "collections/retina/roles/agent/files/crds/retina.sh_metricsconfigurations.yaml"
UNIT_PX = 0.30  # inches per Grafana grid row
BACKGROUND, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
COLORS = [
    "#73bf69",
    "#f2cc0c",
    "#8ab8ff",
    "#ff780a",
    "#f2495c",
    "#5794f2",
    "#b877d9",
    "#fade2a",
    "#37872d",
    "#c4162a",
]


class Prometheus:
    def __init__(self, url: str) -> None:
        if not re.match(r"^https?://", url):
            raise SystemExit(f"--prometheus {url!r}: give a URL like http://127.0.0.1:9090")
        self.url = url.rstrip("/")

    def _get(self, path: str, **params: str | float) -> dict:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body}")
        return body["data"]

    def instant(self, promql: str) -> list[dict]:
        return self._get("/api/v1/query", query=promql)["result"]

    def range(self, promql: str, start: float, end: float, step: float) -> list[dict]:
        return self._get("/api/v1/query_range", query=promql, start=start, end=end, step=step)["result"]


# -- formatting -------------------------------------------------------------------------------
def human(value: float, unit: str) -> str:
    if math.isnan(value):
        return "NaN"
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    suffix = {"pps": " p/s", "Bps": "B/s", "reqps": " req/s", "s": "s", "ms": " ms"}.get(unit, "")
    if unit == "s" and abs(value) < 1:
        return f"{value * 1000:.2f} ms"
    for threshold, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= threshold:
            return f"{value / threshold:.2f} {prefix}{suffix.strip()}"
    return f"{value:.3g}{suffix}"


def legend(fmt: str, labels: dict[str, str]) -> str:
    if not fmt:
        return ",".join(f"{k}={v}" for k, v in labels.items() if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), fmt)


# -- one panel --------------------------------------------------------------------------------
def draw_panel(ax, panel: dict, prom: Prometheus, start: float, end: float) -> None:
    ax.set_facecolor(PANEL)
    for spine in ax.spines.values():
        spine.set_color(GRID)
    ax.tick_params(colors=TEXT, labelsize=6)
    ax.set_title(panel["title"], color=TEXT, fontsize=8, loc="left", pad=3)
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
    kind = panel["type"]
    if kind == "heatmap":
        unit = (panel.get("options") or {}).get("yAxis", {}).get("unit", unit)
    try:
        drawn = {
            "timeseries": draw_timeseries,
            "stat": draw_stat,
            "table": draw_table,
            "heatmap": draw_heatmap,
        }[kind](ax, panel, prom, start, end, unit)
    except Exception as exc:  # one failing panel must not lose the picture
        drawn, note = False, f"error: {exc}"[:80]
    else:
        note = "No data"
    if not drawn:
        ax.set_xticks([])
        ax.set_yticks([])
        reason = ""
        description = panel.get("description", "")
        if NEEDS_REMOTE_CONTEXT in description:
            reason = "\n(needs remote context)"
        elif NEEDS_POD_LEVEL in description:
            reason = "\n(needs pod-level metrics)"
        elif EMPTY_WHEN_HEALTHY in description:
            reason = "\n(empty on a healthy node)"
        ax.text(
            0.5,
            0.5,
            note + reason,
            color="#8e8e8e",
            ha="center",
            va="center",
            fontsize=7,
            transform=ax.transAxes,
        )


def draw_timeseries(ax, panel, prom, start, end, unit) -> bool:
    step = max(2.0, (end - start) / 150)
    n = 0
    for target in panel["targets"]:
        for series in prom.range(substitute(target["expr"]), start, end, step)[:8]:
            xs = [float(t) - end for t, _ in series["values"]]
            ys = [float(v) for _, v in series["values"]]
            ax.plot(
                [x / 60 for x in xs],
                ys,
                lw=1,
                color=COLORS[n % len(COLORS)],
                label=legend(target.get("legendFormat", ""), series["metric"])[:48],
            )
            n += 1
    if not n:
        return False
    ax.grid(color=GRID, lw=0.5)
    ax.set_xlabel("minutes", color=TEXT, fontsize=6, labelpad=1)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: human(v, unit)))
    ax.legend(
        fontsize=5,
        loc="upper left",
        facecolor=PANEL,
        edgecolor=GRID,
        labelcolor=TEXT,
        ncol=2 if n > 4 else 1,
        framealpha=0.8,
    )
    return True


def draw_stat(ax, panel, prom, start, end, unit) -> bool:
    ax.set_xticks([])
    ax.set_yticks([])
    result = prom.instant(substitute(panel["targets"][0]["expr"]))
    if not result:
        return False
    value = sum(float(s["value"][1]) for s in result)
    ax.text(
        0.5,
        0.42,
        human(value, unit),
        color="#73bf69",
        ha="center",
        va="center",
        fontsize=16,
        weight="bold",
        transform=ax.transAxes,
    )
    return True


def draw_table(ax, panel, prom, start, end, unit) -> bool:
    ax.set_xticks([])
    ax.set_yticks([])
    result = prom.instant(substitute(panel["targets"][0]["expr"]))
    if not result:
        return False
    result.sort(key=lambda s: -float(s["value"][1]))
    columns = [
        k for k in dict.fromkeys(k for s in result for k in s["metric"]) if k not in ("__name__", "job")
    ]
    rows = [
        [s["metric"].get(c, "")[:28] for c in columns] + [human(float(s["value"][1]), unit)]
        for s in result[:8]
    ]
    table = ax.table(
        cellText=rows, colLabels=[*columns, "Value"], loc="upper center", cellLoc="left", colLoc="left"
    )
    table.auto_set_font_size(False)
    table.set_fontsize(5.5)
    for cell in table.get_celld().values():
        cell.set_facecolor(PANEL)
        cell.set_edgecolor(GRID)
        cell.get_text().set_color(TEXT)
    table.scale(1, 0.9)
    return True


def draw_heatmap(ax, panel, prom, start, end, unit) -> bool:
    step = max(5.0, (end - start) / 60)
    result = prom.range(substitute(panel["targets"][0]["expr"]), start, end, step)
    buckets = sorted(((float(s["metric"]["le"]), s) for s in result), key=lambda b: b[0])
    if not buckets:
        return False
    times = sorted({float(t) for _, s in buckets for t, _ in s["values"]})
    index = {t: i for i, t in enumerate(times)}
    cumulative = [[0.0] * len(times) for _ in buckets]
    for row, (_, s) in enumerate(buckets):
        for t, v in s["values"]:
            cumulative[row][index[float(t)]] = float(v)
    counts = [
        [cumulative[r][c] - (cumulative[r - 1][c] if r else 0.0) for c in range(len(times))]
        for r in range(len(buckets))
    ]
    used = [r for r in range(len(buckets)) if any(v > 0 for v in counts[r])]
    if not used:
        return False
    lo, hi = max(0, used[0] - 1), min(len(buckets), used[-1] + 2)
    grid = counts[lo:hi]
    ax.imshow(
        grid,
        aspect="auto",
        origin="lower",
        cmap="Oranges",
        interpolation="nearest",
        extent=(-(end - times[0]) / 60, 0, 0, len(grid)),
    )
    labels = [human(b, unit) if not math.isinf(b) else "+Inf" for b, _ in buckets[lo:hi]]
    ax.set_yticks([i + 0.5 for i in range(len(grid))][:: max(1, len(grid) // 6)])
    ax.set_yticklabels(labels[:: max(1, len(grid) // 6)])
    ax.set_xlabel("minutes", color=TEXT, fontsize=6, labelpad=1)
    return True


# -- one dashboard ----------------------------------------------------------------------------
def render(model: dict, prom: Prometheus, out: Path, minutes: float) -> Path:
    end = time.time()
    start = end - minutes * 60
    every = model["panels"]
    height_units = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in every) + 2
    fig = plt.figure(figsize=(15, height_units * UNIT_PX), facecolor=BACKGROUND)
    top = 1.5  # grid units reserved for the title

    def box(pos: dict) -> tuple[float, float, float, float]:
        """Figure fraction (left, bottom, width, height) of a panel's axes, title room above."""
        margin = min(0.035, 0.06 * pos["w"] / 24)  # room for the y tick labels
        left = pos["x"] / 24 + margin
        width = pos["w"] / 24 - margin - 0.006
        bottom = 1 - (pos["y"] + top + pos["h"] - 0.7) / height_units
        height = (pos["h"] - 1.6) / height_units
        return left, bottom, width, height

    fig.text(
        0.01, 1 - 0.6 / height_units, model["title"], color=TEXT, fontsize=13, weight="bold", va="center"
    )
    fig.text(
        0.99,
        1 - 0.6 / height_units,
        f"live Prometheus, last {minutes:g} min, all variables = All",
        color="#8e8e8e",
        fontsize=7,
        ha="right",
        va="center",
    )
    for panel in every:
        if panel["type"] == "row":
            y = 1 - (panel["gridPos"]["y"] + top + 0.5) / height_units
            fig.text(0.005, y, panel["title"], color=TEXT, fontsize=9, weight="bold")
    for panel in panels(model):
        draw_panel(fig.add_axes(box(panel["gridPos"])), panel, prom, start, end)
    path = out / f"{model['uid']}.png"
    fig.savefig(path, dpi=64, facecolor=BACKGROUND)
    plt.close(fig)
    return path


def render_all(prom: Prometheus, out: Path, minutes: float) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    return [render(builder(), prom, out, minutes) for builder in build.DASHBOARDS.values()]


@contextlib.contextmanager
def lab_prometheus(seconds: float, pod_level: bool) -> Iterator[Prometheus]:
    """The lab: node with pods, the agent, Prometheus with the rules, the workload (root only).

    With ``pod_level`` the agent also runs packetparser and latency, and names the pods from a
    Kubernetes API emulator (the lab's pods as Deployment web and StatefulSet db in ``shop``).
    """
    with contextlib.ExitStack() as stack:
        node = stack.enter_context(LabNode(pod_names=("a", "b")))
        config: dict = {}
        if pod_level:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            kube = stack.enter_context(KubeEmulator(workdir=workdir))
            kube.seed(lab_cluster_objects(node, "lab-node", yaml.safe_load(CRD.read_text())))
            os.environ.update(KUBECONFIG=str(kube.kubeconfig_path), NODE_NAME="lab-node")
            config = {
                "enablePodLevel": True,
                "enabledPlugin": [
                    "linuxutil",
                    "packetforward",
                    "dropreason",
                    "dns",
                    "tcpretrans",
                    "packetparser",
                    "latency",
                ],
                "plugins": {"latency": {"apiServer": [f"{node['b'].ip}:{API_SERVER}"]}},
            }
        agent = stack.enter_context(AgentProcess(config))

        def on_veths() -> list[str]:
            filters = our_tc_filters(agent.proc.pid)
            return [v for v in node.host_veths if any(f.startswith(f"{v}/") for f in filters)]

        # the pods exist before the agent starts: it attaches to their veths at once
        wait_for(lambda: len(on_veths()) == len(node.host_veths), 60, message="TC programs on the lab veths")
        server = stack.enter_context(
            PrometheusServer([f"127.0.0.1:{agent.port}"], scrape_interval="2s", rule_files=[str(RULES)])
        )
        work = stack.enter_context(LabWorkload(node, api_server=pod_level))
        wait_for(lambda: server.query("up == 1"), 60, message="the first scrape")
        print(f"lab running; workload for {seconds:.0f} s", file=sys.stderr)
        time.sleep(seconds)  # the workload is what we want to picture: let it run
        if work.errors:
            print(f"workload errors: {work.errors[:3]}", file=sys.stderr)
        if len(on_veths()) != len(node.host_veths):
            print(
                "warning: the agent's TC programs left the lab veths during the run: "
                "forward and DNS panels stop there",
                file=sys.stderr,
            )
        yield Prometheus(server.url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prometheus", metavar="URL", help="a Prometheus that scrapes agents")
    source.add_argument(
        "--lab",
        metavar="SECONDS",
        type=float,
        help="start the lab and run the workload this long first (root)",
    )
    parser.add_argument(
        "--pod-level",
        action="store_true",
        help="with --lab: pod-level agent (packetparser, latency) and pod names",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    parser.add_argument(
        "--minutes", type=float, default=None, help="time range to draw (default: 10, or the lab's run time)"
    )
    args = parser.parse_args(argv)
    if args.lab is not None and not 30 <= args.lab <= 3600:
        parser.error("--lab: give between 30 and 3600 seconds")
    if args.pod_level and args.lab is None:
        parser.error("--pod-level works with --lab only")
    if args.prometheus:
        paths = render_all(Prometheus(args.prometheus), args.out, args.minutes or 10)
    else:
        with lab_prometheus(args.lab, args.pod_level) as prom:
            paths = render_all(prom, args.out, args.minutes or args.lab / 60)
    for path in paths:
        print(f"{path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
