"""Write (or check) the dashboards' JSON files for the installer's ``dashboards`` role.

python -m retina_dashboards.build            # write the files
python -m retina_dashboards.build --check    # exit 1 if a file is missing or out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from retina_dashboards import apiserver, dns, overview, pods

#: file stem -> builder; the stem becomes the ConfigMap name in the dashboards role.
DASHBOARDS: dict[str, Callable[[], dict]] = {
    "retina-cluster-overview": overview.build,
    "retina-dns": dns.build,
    "retina-pod-traffic": pods.build,
    "retina-apiserver-latency": apiserver.build,
}

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO / "collections/retina/roles/dashboards/files/dashboards"


def render(builder: Callable[[], dict]) -> str:
    return json.dumps(builder(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_DIR, help=f"folder for the JSON files (default: {DEFAULT_DIR})"
    )
    parser.add_argument(
        "--check", action="store_true", help="do not write; fail if a file differs from what the code builds"
    )
    args = parser.parse_args(argv)
    if not args.out.is_dir():
        parser.error(f"--out {args.out}: not a folder; create it or pass an existing one")
    stale = []
    for stem, builder in DASHBOARDS.items():
        path = args.out / f"{stem}.json"
        text = render(builder)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(
            "out of date (run python -m retina_dashboards.build):\n  " + "\n  ".join(stale), file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
