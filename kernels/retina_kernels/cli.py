"""``retina-kernel-matrix``: boot each kernel under qemu, run preflight, the agent and a lab, report.

sudo scripts/kernel_matrix.sh --kernels 5.10,6.1,6.1-cloud,6.12 --out /tmp/km (it writes docs/kernels.md)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .catalog import KERNELS, parse_kernels
from .fixtures import save_fixture
from .matrix import DEFAULT_CACHE, prepare, run_kernels
from .report import markdown, summarize

#: docs/kernels.md: the tables are generated; from this line on the file is written by hand
#: (how to run, what it costs, what is known about kernels that do not pass) and kept.
HAND_WRITTEN = (
    "<!-- Written by hand from here on: kept when retina-kernel-matrix regenerates the tables above. -->"
)


def write_docs(path: Path, generated: str) -> None:
    """``generated`` into ``path``, keeping its hand-written part (from ``HAND_WRITTEN`` on)."""
    old = path.read_text() if path.exists() else ""
    kept = old[old.index(HAND_WRITTEN) :] if HAND_WRITTEN in old else ""
    path.write_text(generated + ("\n" + kept if kept else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="retina-kernel-matrix", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kernels",
        default=",".join(KERNELS),
        help=f"comma-separated kernels (default: all: {','.join(KERNELS)})",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"kernel packages, root file system, disks (default {DEFAULT_CACHE})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("kernel-matrix"),
        help="where each kernel's results go (default ./kernel-matrix)",
    )
    parser.add_argument("--docs", type=Path, help="write the report table here (e.g. docs/kernels.md)")
    parser.add_argument("--smp", type=int, default=2, help="guest vCPUs (default 2)")
    parser.add_argument("--memory", type=int, default=2048, help="guest memory in MB (default 2048)")
    parser.add_argument(
        "--fixtures",
        type=Path,
        help="save each guest's host tree as a preflight fixture here (e.g. tests/preflight/hosts)",
    )
    parser.add_argument(
        "--from-results",
        action="store_true",
        help="boot nothing: report (and save fixtures) from the result.json files "
        "already in --out, e.g. after the tests wrote theirs there",
    )
    parser.add_argument("--parallel", type=int, default=2, help="guests booted at once (default 2)")
    args = parser.parse_args(argv)
    try:
        kernels = parse_kernels(args.kernels)
    except ValueError as exc:
        parser.error(str(exc))
    if os.geteuid() != 0 and not args.from_results:
        print("retina-kernel-matrix: run as root (debootstrap, chroot, depmod)", file=sys.stderr)
        return 2
    started = time.monotonic()
    if args.from_results:
        results = {k.name: json.loads((args.out / k.name / "result.json").read_text()) for k in kernels}
    else:
        prepared = prepare(args.cache, kernels)
        print(f"prepared in {prepared.seconds:.0f}s: root disk {prepared.rootfs.name}")
        results = run_kernels(
            kernels,
            prepared,
            args.cache,
            args.out,
            parallel=args.parallel,
            smp=args.smp,
            memory_mb=args.memory,
        )
    summaries = []
    for name, result in results.items():
        summary = summarize(result)
        (args.out / name / "summary.json").write_text(json.dumps(summary, indent=1))
        summaries.append(summary)
        if args.fixtures and "tree" in result:
            print(f"{name}: fixture {save_fixture(result, args.out / name, args.fixtures)}")
        print(
            f"{name}: predicted all plugins: {summary.get('predicted_all')}, "
            f"counts exact: {summary.get('counts_exact')}, error: {bool(summary.get('error'))}"
        )
    command = f"scripts/kernel_matrix.sh --kernels {args.kernels}" + (
        f" --from-results --out {args.out}" if args.from_results else ""
    )
    text = markdown(summaries, command)
    if args.docs:
        write_docs(args.docs, text)
    print(text)
    print(f"total {time.monotonic() - started:.0f}s")
    return 0 if all(s.get("predicted_all") and not s.get("error") for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
