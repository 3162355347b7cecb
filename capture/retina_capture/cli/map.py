"""``kubectl retina map [-n NAMESPACE] [--since 15m] [--prometheus URL] [-o table|svg|png|json]``.

Workloads as nodes and the traffic between them as edges (``retina_capture.observe.graph``).
``-o svg``/``-o png`` write the picture to ``--file`` (default: standard output, for
``> map.svg``); ``-n`` keeps the edges that touch that namespace (default: every namespace).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from retina_capture import kube
from retina_capture.cli.diagnose import add_observe_flags, window
from retina_capture.observe import graph, prometheus


def register(sub) -> None:
    p = sub.add_parser("map", help="who talks to whom: workloads and the traffic between them")
    add_observe_flags(p, "15m")
    p.add_argument(
        "-o",
        "--output",
        choices=("table", "svg", "png", "json"),
        default="table",
        help="table (default), svg, png (drawn by Graphviz) or json",
    )
    p.add_argument(
        "--file", type=Path, default=None, help="write the output to this file instead of standard output"
    )


def run(args: argparse.Namespace) -> int:
    seconds = window(args.since)
    client = None

    def api_client():
        nonlocal client
        client = kube.api_client(args.kubeconfig, args.context)
        return client

    try:
        prom = prometheus.connect(
            args.prometheus, api_client, args.prometheus_namespace, args.prometheus_service
        )
        service_map = graph.build_map(prom, seconds, args.since, args.namespace)
    finally:
        if client is not None:
            client.close()
    if args.output == "json":
        data = (json.dumps(service_map.to_json(), indent=2, sort_keys=True) + "\n").encode()
    elif args.output == "table":
        data = graph.table(service_map).encode()
    else:
        try:
            data = graph.render(service_map, args.output)
        except graph.GraphvizMissing as exc:
            raise ValueError(f"-o {args.output}: {exc}") from None
    if args.file is not None:
        if args.file.is_dir():
            raise ValueError(f"--file {args.file}: is a folder; give a file name like map.svg")
        args.file.write_bytes(data)
        print(
            f"wrote {args.file} ({len(service_map.nodes)} workloads, {len(service_map.edges)} edges)",
            file=sys.stderr,
        )
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0
