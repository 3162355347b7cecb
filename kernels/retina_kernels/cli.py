"""``retina-kernel-matrix``: boot each kernel under qemu, run preflight, the agent and a lab, report.

    sudo .venv/bin/retina-kernel-matrix --kernels 5.10,6.1,6.1-cloud,6.12 --docs docs/kernels.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .catalog import KERNELS, parse_kernels
from .matrix import DEFAULT_CACHE, prepare, run_kernel
from .report import markdown, summarize


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="retina-kernel-matrix", description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", default=",".join(KERNELS),
                        help=f"comma-separated kernels (default: all: {','.join(KERNELS)})")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help=f"kernel packages, root file system, disks (default {DEFAULT_CACHE})")
    parser.add_argument("--out", type=Path, default=Path("kernel-matrix"),
                        help="where each kernel's results go (default ./kernel-matrix)")
    parser.add_argument("--docs", type=Path, help="write the report table here (e.g. docs/kernels.md)")
    parser.add_argument("--smp", type=int, default=2, help="guest vCPUs (default 2)")
    parser.add_argument("--memory", type=int, default=2048, help="guest memory in MB (default 2048)")
    args = parser.parse_args(argv)
    try:
        kernels = parse_kernels(args.kernels)
    except ValueError as exc:
        parser.error(str(exc))
    if os.geteuid() != 0:
        print("retina-kernel-matrix: run as root (debootstrap, chroot, depmod)", file=sys.stderr)
        return 2
    started = time.monotonic()
    prepared = prepare(args.cache, kernels[0])
    print(f"prepared in {prepared.seconds:.0f}s: root disk {prepared.rootfs.name}, headers {prepared.headers}")
    summaries = []
    for kernel in kernels:
        result = run_kernel(kernel, prepared, args.cache, args.out / kernel.name,
                            smp=args.smp, memory_mb=args.memory)
        summary = summarize(result)
        (args.out / kernel.name / "summary.json").write_text(json.dumps(summary, indent=1))
        summaries.append(summary)
        print(f"{kernel.name}: predicted all plugins: {summary.get('predicted_all')}, "
              f"counts exact: {summary.get('counts_exact')}, error: {bool(summary.get('error'))}")
    command = f"retina-kernel-matrix --kernels {args.kernels}"
    text = markdown(summaries, command)
    if args.docs:
        args.docs.write_text(text)
    print(text)
    print(f"total {time.monotonic() - started:.0f}s")
    return 0 if all(s.get("predicted_all") and not s.get("error") for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
