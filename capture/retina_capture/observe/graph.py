"""Who talks to whom: workloads as nodes, traffic between them as edges, from the pod-level
metrics with remote context (``source_*``/``destination_*`` labels), over a time window.

Per edge: packets and bytes (``adv_forward_*``, the larger of the two observation points: a
packet between two pods of one node is seen leaving one and entering the other), drops
(``adv_drop_count``; drop ratio = drops / packets sent, since a packet dropped at its
destination was still forwarded), retransmissions (``adv_tcpretrans_count``) and DNS errors
(``adv_dns_response_count`` with a return code other than NOERROR, drawn on the edge from the
asking workload to the DNS server). A workload is ``namespace/name`` (its pod name when the
labels carry no workload, ``outside`` for addresses of no pod).

Drawn with Graphviz's ``dot`` (Debian ``graphviz``) as SVG or PNG; also a table and JSON.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import asdict, dataclass

from retina_capture.observe.prometheus import Prometheus, window_delta

ADV = "networkobservability_adv_"
SIDES = ("source", "destination")
OUTSIDE = "outside"


@dataclass
class Edge:
    source: str
    destination: str
    packets: float = 0
    bytes: float = 0
    drops: float = 0
    retransmissions: float = 0
    dns_errors: float = 0

    @property
    def drop_ratio(self) -> float:
        return self.drops / self.packets if self.packets else (1.0 if self.drops else 0.0)

    def to_json(self) -> dict:
        return {**asdict(self), "drop_ratio": round(self.drop_ratio, 4)}


@dataclass
class ServiceMap:
    nodes: list[str]
    edges: list[Edge]
    window: str

    def to_json(self) -> dict:
        return {"window": self.window, "nodes": self.nodes, "edges": [e.to_json() for e in self.edges]}


def workload(labels: dict[str, str], side: str) -> str:
    ns = labels.get(f"{side}_namespace", "")
    name = labels.get(f"{side}_workload_name", "") or labels.get(f"{side}_podname", "")
    if not name or name == "unknown":
        return OUTSIDE
    return f"{ns}/{name}" if ns and ns != "unknown" else name


_BY = tuple(f"{side}_{field}" for side in SIDES for field in ("namespace", "workload_name", "podname"))


def _per_edge(
    prom: Prometheus,
    metric: str,
    window: float,
    extra: dict[str, str],
    observed_twice: bool,
    at: float | None,
) -> dict[tuple[str, str], float]:
    by = (*_BY, "direction") if observed_twice else _BY
    totals: dict[tuple[str, str, str], float] = {}
    for key, value in window_delta(prom, metric, extra, by, window, at).items():
        labels = dict(zip(by, key))
        pair = (workload(labels, "source"), workload(labels, "destination"), labels.get("direction", ""))
        totals[pair] = totals.get(pair, 0.0) + value
    edges: dict[tuple[str, str], float] = {}
    for (src, dst, _), value in totals.items():  # the larger observation point
        edges[(src, dst)] = max(edges.get((src, dst), 0.0), value)
    return edges


def build_map(
    prom: Prometheus, window: float, window_text: str, namespace: str | None = None, at: float | None = None
) -> ServiceMap:
    packets = _per_edge(prom, ADV + "forward_count", window, {}, True, at)
    nbytes = _per_edge(prom, ADV + "forward_bytes", window, {}, True, at)
    drops = _per_edge(prom, ADV + "drop_count", window, {}, False, at)
    retrans = _per_edge(prom, ADV + "tcpretrans_count", window, {}, True, at)
    dns_errors: dict[tuple[str, str], float] = {}
    for key, value in window_delta(
        prom, ADV + "dns_response_count", {}, (*_BY, "return_code"), window, at
    ).items():
        labels = dict(zip((*_BY, "return_code"), key))
        if labels["return_code"] in ("NOERROR", ""):
            continue
        # the response goes server -> client; the error belongs to the client's edge
        pair = (workload(labels, "destination"), workload(labels, "source"))
        dns_errors[pair] = dns_errors.get(pair, 0.0) + value
    edges: dict[tuple[str, str], Edge] = {}
    for values, field in (
        (packets, "packets"),
        (nbytes, "bytes"),
        (drops, "drops"),
        (retrans, "retransmissions"),
        (dns_errors, "dns_errors"),
    ):
        for pair, value in values.items():
            edge = edges.setdefault(pair, Edge(*pair))
            setattr(edge, field, getattr(edge, field) + value)
    chosen = [
        e
        for e in edges.values()
        if namespace is None or any(w.split("/")[0] == namespace for w in (e.source, e.destination))
    ]
    chosen.sort(key=lambda e: (-e.bytes, e.source, e.destination))
    nodes = sorted({w for e in chosen for w in (e.source, e.destination)})
    return ServiceMap(nodes, chosen, window_text)


# -- output ---------------------------------------------------------------------------------
def _human(value: float, unit: str = "") -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.1f}{suffix}{unit}"
    return f"{int(round(value))}{unit}"


def table(service_map: ServiceMap) -> str:
    header = ("SOURCE", "DESTINATION", "PACKETS", "BYTES", "DROPS", "DROP %", "DNS ERRORS", "RETRANS")
    rows = [header] + [
        (
            e.source,
            e.destination,
            f"{int(e.packets)}",
            f"{int(e.bytes)}",
            f"{int(e.drops)}",
            f"{100 * e.drop_ratio:.1f}",
            f"{int(e.dns_errors)}",
            f"{int(e.retransmissions)}",
        )
        for e in service_map.edges
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def dot(service_map: ServiceMap) -> str:
    """The map in Graphviz's DOT language: red edges drop, orange edges get DNS errors."""
    lines = [
        "digraph retina {",
        "  rankdir=LR;",
        '  graph [fontname="Helvetica", label='
        + _quote(f"Retina service map, last {service_map.window}")
        + ", labelloc=t];",
        '  node [shape=box, style="rounded,filled", fillcolor="#eef3fb", fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    for name in service_map.nodes:
        shape = ', shape=ellipse, fillcolor="#f2f2f2"' if name == OUTSIDE else ""
        lines.append(f"  {_quote(name)} [label={_quote(name)}{shape}];")
    top = max((e.bytes for e in service_map.edges), default=1.0) or 1.0
    for e in service_map.edges:
        label = [f"{_human(e.packets)} pkts, {_human(e.bytes, 'B')}"]
        if e.drops:
            label.append(f"drops {_human(e.drops)} ({100 * e.drop_ratio:.1f}%)")
        if e.dns_errors:
            label.append(f"DNS errors {_human(e.dns_errors)}")
        if e.retransmissions:
            label.append(f"retrans {_human(e.retransmissions)}")
        color = "#d62728" if e.drops else "#ff7f0e" if e.dns_errors else "#4c72b0"
        width = 1 + 3 * (e.bytes / top)
        lines.append(
            f"  {_quote(e.source)} -> {_quote(e.destination)} "
            f"[label={_quote(chr(10).join(label))}, color={_quote(color)}, "
            f"penwidth={width:.2f}];"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


class GraphvizMissing(RuntimeError):
    pass


def render(service_map: ServiceMap, fmt: str) -> bytes:
    """SVG or PNG bytes, drawn by ``dot``."""
    binary = shutil.which("dot")
    if binary is None:
        raise GraphvizMissing(
            "Graphviz's dot is not installed: apt-get install graphviz (or use -o table / -o json)"
        )
    done = subprocess.run(
        [binary, f"-T{fmt}"], input=dot(service_map).encode(), capture_output=True, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"dot failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout
