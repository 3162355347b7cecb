"""``kubectl retina diagnose POD_A POD_B [-n NS] [--since 10m] [-o text|json]``.

Reads the pair's metrics from Prometheus and prints a verdict with its evidence
(``retina_capture.observe.diagnose``; docs/diagnose.md explains each verdict). Pods are
``NAME`` (in ``-n``, default the context's namespace) or ``NAMESPACE/NAME``.
"""

from __future__ import annotations

import argparse
import json
import sys

from retina_capture import kube
from retina_capture.observe import cluster, prometheus
from retina_capture.observe.diagnose import diagnose
from retina_common.durations import DurationError, bounded_duration


def add_observe_flags(parser: argparse.ArgumentParser, since: str) -> None:
    """Flags shared by diagnose and map: cluster access, Prometheus, the window."""
    a = parser.add_argument
    a("--kubeconfig", help="path to the kubeconfig file (default $KUBECONFIG, ~/.kube/config)")
    a("--context", help="the kubeconfig context to use")
    a("-n", "--namespace", help="namespace (default: the context's namespace)")
    a("--since", default=since, help=f"how far back to look, e.g. 5m, 1h (default {since})")
    a(
        "--prometheus",
        default=None,
        help=f"Prometheus URL (default ${prometheus.ENV_URL}, else the installer's "
        f"{prometheus.DEFAULT_NAMESPACE}/{prometheus.DEFAULT_SERVICE} through the API server)",
    )
    a("--prometheus-namespace", default=prometheus.DEFAULT_NAMESPACE, help=argparse.SUPPRESS)
    a("--prometheus-service", default=prometheus.DEFAULT_SERVICE, help=argparse.SUPPRESS)


def window(text: str) -> float:
    try:
        return bounded_duration(text, minimum=1, maximum=90 * 86400)
    except DurationError as exc:
        raise ValueError(f"--since: {exc}") from None


def register(sub) -> None:
    p = sub.add_parser("diagnose", help="why pod A cannot reach pod B: a verdict with evidence")
    p.add_argument("pod_a", metavar="POD_A", help="the client pod: NAME or NAMESPACE/NAME")
    p.add_argument("pod_b", metavar="POD_B", help="the server pod: NAME or NAMESPACE/NAME")
    add_observe_flags(p, "10m")
    p.add_argument(
        "-o", "--output", choices=("text", "json"), default="text", help="text (default) or json for scripts"
    )


def run(args: argparse.Namespace) -> int:
    seconds = window(args.since)
    namespace = args.namespace or kube.default_namespace(args.kubeconfig, args.context)
    client = kube.api_client(args.kubeconfig, args.context)
    try:
        pods = [
            cluster.get_pod(client, *cluster.split_ref(ref, namespace)) for ref in (args.pod_a, args.pod_b)
        ]
        prom = prometheus.connect(
            args.prometheus, lambda: client, args.prometheus_namespace, args.prometheus_service
        )
        result = diagnose(prom, client, pods[0], pods[1], seconds, args.since)
    finally:
        client.close()
    if args.output == "json":
        json.dump(result.to_json(), sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    a, b = result.a, result.b
    print(f"A = {a.ref} ({a.ip or 'no IP'}, node {a.node or '-'})")
    print(f"B = {b.ref} ({b.ip or 'no IP'}, node {b.node or '-'})")
    print(f"last {result.window}, Prometheus {prom.where}")
    print()
    print(f"{result.verdict.code}: {result.verdict.summary}")
    for line in result.verdict.evidence:
        print(f"  - {line}")
    for other in result.findings[1:]:
        print(f"\nalso {other.code}: {other.summary}")
        for line in other.evidence:
            print(f"  - {line}")
    return 0
