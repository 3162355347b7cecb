"""Command line: ``retina-preflight [--json] [--root DIR] [--control-host] ...``.

Exit codes: 0 every check passed, 1 a required check failed, 2 warnings only, 64 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys

from retina_preflight.core import PreflightInputError, PreflightOptions, render_table, run_preflight
from retina_preflight.core.catalogue import PLUGIN_NAMES

EXIT_USAGE = 64


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retina-preflight",
        description="Check whether this node (and optionally the control host) can run the Retina agent.",
        epilog="Exit codes: 0 all checks pass, 1 a required check failed, 2 warnings only.",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--root",
        default="/",
        metavar="DIR",
        help="read procfs/sysfs/boot/lib/modules from this host tree instead of the live host; "
        "live-only probes are skipped unless DIR/retina-preflight.probes.json records them",
    )
    parser.add_argument(
        "--control-host",
        action="store_true",
        help="also check Helm, kubectl, the cluster, kube-prometheus-stack and Grafana",
    )
    parser.add_argument(
        "--control-only", action="store_true", help="check only the control host (implies --control-host)"
    )
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)"
    )
    parser.add_argument("--context", help="kubeconfig context")
    parser.add_argument("--grafana-url", help="Grafana base URL; GET <url>/api/health must answer")
    parser.add_argument(
        "--plugins",
        default=",".join(PLUGIN_NAMES),
        help="comma-separated plugins to give verdicts for (default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = PreflightOptions(
        root=args.root,
        node=not args.control_only,
        control_host=args.control_host or args.control_only,
        kubeconfig=args.kubeconfig,
        context=args.context,
        grafana_url=args.grafana_url,
        plugins=tuple(p.strip() for p in args.plugins.split(",") if p.strip()),
    )
    try:
        report = run_preflight(options)
    except PreflightInputError as error:
        print(f"retina-preflight: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_table(report))
    return report["summary"]["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
